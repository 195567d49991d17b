"""A run without `train_steps`: epochs, an evaluation after each, early stopping, the best weights kept.

The rules are in early_stopping.py. After each epoch (one pass, `steps_per_epoch` steps) the run saves its
checkpoint, evaluates the whole eval split, saves the weights to `model_run_dir/best_checkpoint/` when the
eval AUC improved, and the chief records the evaluation in `model_run_dir/early_stopping.json`. A restarted
run reads that history back (up to its checkpoint's step), finishes the epoch it was in and goes on, so its
decisions are the ones the uninterrupted run would have taken. At the end every worker restores the best
weights (mirrored: the chief's checkpoint; row: its own shard's; a row run must resume with the worker count
its best checkpoint was written with) and the run exports them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os

import tensorflow as tf

from components.trainer import artifacts
from components.trainer.early_stopping import (BEST_CHECKPOINT_DIR, HISTORY_FILE, Evaluation, best_index,
                                               history_json, load_history, stop_reason)
from components.trainer.loop import TrainResult
from components.trainer.checkpoint_places import place_for
from components.trainer.sharding import barrier

log = logging.getLogger(__name__)


class BestCheckpoint:
    """The model weights of the best evaluation: written by the chief (mirrored) or by every worker (row)."""

    def __init__(self, job, model):
        self.place = place_for(os.path.join(job.fn_args.model_run_dir, BEST_CHECKPOINT_DIR), model)
        # The variables themselves: a Keras 3 model tracks only some of its layers for tf.train.Checkpoint (the
        # run's checkpoint reaches the rest through the optimizers).
        self.checkpoint = tf.train.Checkpoint(variables=list(model.variables))
        self.dynamic_tables = model.dynamic_tables() if hasattr(model, "dynamic_tables") else []
        writes = job.is_chief or job.row_sharded
        self.manager = (tf.train.CheckpointManager(self.checkpoint, self.place.directory, max_to_keep=1)
                        if writes else None)

    def path(self, step: int) -> str:
        return os.path.join(self.place.directory, f"ckpt-{step}")

    def check(self, history: list[Evaluation]) -> None:
        """Raises ValueError when a restarted run's best weights are not where this worker reads them."""
        best = best_index([e.auc for e in history])
        if best is not None and not tf.io.gfile.exists(self.path(history[best].step) + ".index"):
            raise ValueError(f"{self.path(history[best].step)} (the best weights so far, step {history[best].step}) "
                             "is missing: resume a run with split tables with the table plan and number of workers it "
                             "started with, or use a new model_run_dir")

    def save(self, step: int) -> None:
        if self.manager is not None:
            artifacts.save_checkpoint(self.manager, step)

    def restore(self, strategy, step: int) -> None:
        barrier(strategy)  # the chief has written the checkpoint before the other workers read it
        self.checkpoint.restore(self.path(step)).assert_existing_objects_matched()
        for table in self.dynamic_tables:  # the key -> row hash tables follow the restored row keys
            table.rebuild_index()


@dataclasses.dataclass
class EarlyStopped:
    result: TrainResult  # of this run's steps
    eval_metrics: dict  # the best evaluation's, i.e. of the weights now in the model
    stopping: dict  # history_json plus "mode"


def train_with_early_stopping(job, restored, manager, train_epoch, evaluate_now) -> EarlyStopped:
    """Epochs until `stop_reason` says stop; the model then holds the best evaluation's weights.

    `train_epoch(target_step)` trains on to `target_step` and returns a `TrainResult`; `evaluate_now()` returns
    the eval metrics of the weights in the model.
    """
    config, epoch_steps = job.config, job.epoch_steps
    history = load_history(job.fn_args.model_run_dir, restored.resumed_from)
    best = BestCheckpoint(job, restored.model)
    best.check(history)
    results = []
    while stop_reason([e.auc for e in history], config.patience, config.max_epochs) is None:
        step = int(restored.step.numpy())
        # A run restarted mid-epoch first ends that epoch (and one killed before its evaluation evaluates it).
        epoch = max(len(history) + 1, math.ceil(step / epoch_steps))
        target = epoch * epoch_steps
        if step < target:
            results.append(train_epoch(target))
            artifacts.save_checkpoint(manager, target)
        history.append(Evaluation(epoch, target, evaluate_now()))
        improved = best_index([e.auc for e in history]) == len(history) - 1
        if improved:
            best.save(target)
        if job.is_chief:
            artifacts.write_json(os.path.join(job.run_dir, HISTORY_FILE),
                                 history_json(history, config.patience, config.max_epochs, epoch_steps))
        log.info("epoch %d/%d (step %d): eval AUC %.4f%s", epoch, config.max_epochs, target, history[-1].auc,
                 " (best so far)" if improved else f", best {max(e.auc for e in history):.4f}")
    chosen = history[best_index([e.auc for e in history])]
    best.restore(job.strategy, chosen.step)
    stopping = dict(history_json(history, config.patience, config.max_epochs, epoch_steps), mode="early_stopping")
    log.info("stopped after epoch %d (%s); exporting epoch %d's weights (step %d, eval AUC %.4f)",
             history[-1].epoch, stopping["reason"], chosen.epoch, chosen.step, chosen.auc)
    return EarlyStopped(_merged(results), dict(chosen.metrics), stopping)


def _merged(results: list[TrainResult]) -> TrainResult:
    return TrainResult(steps_run=sum(r.steps_run for r in results),
                       losses=[p for r in results for p in r.losses],
                       step_seconds=[s for r in results for s in r.step_seconds])
