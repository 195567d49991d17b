"""`run_fn(fn_args)`: train, evaluate and export (the TFX Trainer module contract).

Steps: validate the arguments and metadata -> choose the strategy from
TF_CONFIG -> build model and both optimizers in `strategy.scope()` -> restore
the latest checkpoint, if any -> train the remaining `train_steps - step`
steps with checkpoints every `checkpoint_every` steps -> evaluate
`eval_steps` global batches -> export the SavedModel -> fit the baseline
(chief; baseline_run.py) and write metrics, curve and TensorBoard logs.
With `train_steps` None the train and evaluate steps are epochs with early
stopping instead, and the best epoch's weights are exported (epochs.py).
An empty train split is refused before anything is built; an empty eval
split skips the evaluation (metrics.json then has `eval_auc` null and an
`eval_note`; without `train_steps` the run trains one pass) and the model
is still exported. The
chief deletes the temp folders of checkpoint saves that a kill interrupted.
Every worker runs every step (collectives need all of them); only the chief
writes to the real directories, the others write to temporary ones that are
deleted afterwards. The table plan (components/trainer/planner.py) is logged
before training; with any row- or table-wise table every worker also
checkpoints its own shard under `model_run_dir`, and the chief exports the
tables gathered whole (`components/trainer/sharding.py`).

`_run` reads as that list of steps: the input checks live in inputs.py,
building and restoring in restore.py, and each remaining step is a function
here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import shutil
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from components.lockfile import LockedError, lock_inside
from components.trainer import artifacts
from components.trainer import dynamic_tables
from components.trainer.baseline_run import baseline_metrics
from components.trainer.early_stopping import steps_per_epoch
from components.trainer.epochs import train_with_early_stopping
from components.trainer.export import export_saved_model
from components.trainer.fn_args import TrainerConfig, check_fn_args
from components.trainer.inputs import check_train_split, distributed_dataset, empty_eval_note, load_run_metadata
from components.trainer.loop import evaluate, make_predict_step, make_train_step, train
from components.trainer.planner import DATA_PARALLEL, Plan, canonical
from components.trainer.restore import Restored, build_and_restore
from components.trainer.table_plan import make_plan
from components.trainer.sharding import rows_per_replica, weights_checksum, whole_table_model
from components.trainer.strategy import choose_strategy, cluster_from_env
from components.trainer.tf_errors import training_error

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _timed(phases: dict[str, float], name: str):
    start = time.perf_counter()
    yield
    phases[name] = time.perf_counter() - start
    log.info("%s: %.1f s", name, phases[name])


def _set_precision(mixed: bool) -> None:
    if mixed and not tf.config.list_physical_devices("GPU"):
        log.warning("--mixed-precision on CPU: float16 runs but is slower than float32; it pays off on GPUs")
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")


def run_fn(fn_args) -> dict:
    """Trains and exports as described in the module docstring; returns the metrics dict.

    `fn_args` is our `FnArgs` or TFX's (same field names). Raises ValueError
    for bad arguments, TF_CONFIG, missing files, metadata that does not
    match the data, or a model_run_dir another run is writing (the chief
    holds `model_run_dir/.embedopt-lock` while it runs).
    """
    config = TrainerConfig.from_custom_config(getattr(fn_args, "custom_config", None))
    check_fn_args(fn_args)
    cluster = cluster_from_env()
    lock = (lock_inside(fn_args.model_run_dir, f"model_run_dir {fn_args.model_run_dir!r}") if cluster.is_chief
            else contextlib.nullcontext())
    try:
        with lock:
            return _run(fn_args, config, cluster)
    except LockedError as err:  # only taking the lock raises it
        raise ValueError(str(err)) from None


@dataclasses.dataclass(frozen=True)
class _Job:
    """One worker's view of the run: what it reads, how it runs, where it writes."""

    fn_args: object
    config: TrainerConfig
    cluster: object
    strategy: tf.distribute.Strategy
    metadata: object
    metadata_path: str
    eval_note: str | None  # why evaluation is skipped; None when it runs
    scratch: str | None  # a non-chief worker's temporary directory
    epoch_steps: int  # steps of one pass over the train split
    target_steps: int | None  # where training ends; None: early stopping
    plan: Plan | None = None  # where each table lives (planner.py); None for dynamic tables

    @property
    def early_stopping(self) -> bool:
        return self.target_steps is None

    @property
    def is_chief(self) -> bool:
        return self.cluster.is_chief

    @property
    def row_sharded(self) -> bool:
        """Any table split over the workers (row_wise or table_wise): each worker checkpoints its part."""
        if self.plan is None:  # dynamic tables: row_wise splits them by key hash
            return canonical(self.config.table_sharding) != DATA_PARALLEL
        return any(p != DATA_PARALLEL for p, _ in self.plan.layout())

    @property
    def run_dir(self) -> str:
        return self.fn_args.model_run_dir if self.is_chief else self.scratch

    @property
    def serving_dir(self) -> str:
        return self.fn_args.serving_model_dir if self.is_chief else os.path.join(self.scratch, "serving")


def _run(fn_args, config: TrainerConfig, cluster) -> dict:
    job = _prepare(fn_args, config, cluster)
    keras.utils.set_random_seed(config.seed)
    phases = {}
    phase_start = time.perf_counter()
    restored = build_and_restore(job.strategy, job.metadata, config, fn_args.model_run_dir, job.target_steps,
                                 job.is_chief, job.metadata_path, plan=job.plan)
    phases["build_and_restore"] = time.perf_counter() - phase_start
    ckpt_dir = (restored.place.directory if job.is_chief or job.row_sharded
                else os.path.join(job.scratch, artifacts.CHECKPOINT_DIR))
    manager = tf.train.CheckpointManager(restored.checkpoint, ckpt_dir, max_to_keep=3)
    train_ds, eval_ds = _datasets(job, restored.resumed_from)
    # One step function and one iterator for the whole run: epochs read on where the previous one stopped.
    train_step, train_iterator = make_train_step(job.strategy, restored.state, config.batch_size), iter(train_ds)
    phases["train"] = 0.0

    def train_to(target: int):
        return _train(job, restored, train_step, train_iterator, manager, phases, target)

    if job.early_stopping:
        predict_step = make_predict_step(job.strategy, restored.model)
        stopped = train_with_early_stopping(job, restored, manager, train_to,
                                            lambda: _evaluate(job, restored.model, eval_ds, phases, predict_step))
        result, metrics = stopped.result, stopped.eval_metrics
        metrics["stopping"] = stopped.stopping
    else:
        result = train_to(job.target_steps)
        with _timed(phases, "final_checkpoint"):
            artifacts.save_checkpoint(manager, int(restored.step.numpy()))
        metrics = _evaluate(job, restored.model, eval_ds, phases)
        metrics["stopping"] = ({"mode": "train_steps"} if fn_args.train_steps is not None else
                               {"mode": "one_pass", "reason": "no eval split to stop on"})
    with _timed(phases, "export"):
        _export(job, restored.model)
    metrics.update(_run_metrics(job, restored, result, phases))
    tables = dynamic_tables.table_metrics(restored.model, job.strategy)
    if tables is not None:  # only for dynamic tables, so a fixed-table run's metrics.json keeps its fields
        metrics[dynamic_tables.METRICS_KEY] = tables
    if job.is_chief and config.baseline and not job.eval_note:
        metrics.update(baseline_metrics(fn_args.train_files, fn_args.eval_files, job.metadata, metrics["eval_auc"],
                                        early_stopping=job.early_stopping))
        metrics["phase_seconds"]["baseline"] = metrics["baseline_seconds"]
    _write_outputs(job, metrics, result)
    return metrics


def _prepare(fn_args, config: TrainerConfig, cluster) -> _Job:
    """Checks the data, sets the precision and chooses the strategy; raises ValueError before anything is built."""
    metadata_path, metadata, train_files = load_run_metadata(fn_args, config)
    _set_precision(config.mixed_precision)
    strategy = choose_strategy(config.strategy, cluster)
    # Reading the files runs TF ops, which MultiWorkerMirroredStrategy must come before.
    check_train_split(train_files, fn_args.train_files, metadata, metadata_path)
    eval_note = empty_eval_note(fn_args.eval_files, metadata, metadata_path)
    dynamic_tables.check_table_kind(config, metadata, metadata_path)
    if config.batch_size % strategy.num_replicas_in_sync:
        raise ValueError(f"batch_size {config.batch_size} must be a multiple of the "
                         f"{strategy.num_replicas_in_sync} replicas")
    train_rows = metadata.row_counts.get("train", 0)
    epoch_steps = steps_per_epoch(train_rows, config.batch_size)
    target = fn_args.train_steps
    if target is not None and cluster.is_chief:
        _warn_on_many_passes(target, config.batch_size, train_rows)
    if target is None and eval_note:
        target = epoch_steps
        log.warning("no train_steps and an empty eval split, so nothing to stop early on: training one pass over "
                    "the train split (%d steps)", epoch_steps)
    plan = make_plan(strategy, metadata, config)
    if plan is not None and cluster.is_chief:
        log.info("%s", plan.describe())
    scratch = None if cluster.is_chief else tempfile.mkdtemp(prefix=f"embedopt-worker{cluster.task_index}-")
    return _Job(fn_args, config, cluster, strategy, metadata, metadata_path, eval_note, scratch, epoch_steps, target,
                plan)


# More passes than this over the train split earn a warning: on click logs the eval AUC falls after about one.
MAX_PASSES = 3


def _warn_on_many_passes(train_steps: int, batch_size: int, train_rows: int) -> None:
    passes = train_steps * batch_size / train_rows if train_rows else 0.0
    if passes > MAX_PASSES:
        log.warning("--train-steps %d x batch %d is %.1f passes over the %s train rows: the model will likely "
                    "overfit (on click logs the eval AUC falls after about one pass). One pass is --train-steps %d",
                    train_steps, batch_size, passes, f"{train_rows:,}", math.ceil(train_rows / batch_size))


def _datasets(job: _Job, resumed_from: int):
    """The train batches (read on from `resumed_from`) and the eval batches (None when evaluation is skipped)."""
    fn_args, global_batch = job.fn_args, job.config.batch_size
    train_ds = distributed_dataset(job.strategy, fn_args.train_files, job.metadata, global_batch, shuffle=True,
                                   seed=job.config.seed, skip_steps=resumed_from)
    eval_ds = (None if job.eval_note else
               distributed_dataset(job.strategy, fn_args.eval_files, job.metadata, global_batch, shuffle=False,
                                   seed=None))
    return train_ds, eval_ds


def _train(job: _Job, restored: Restored, train_step, iterator, manager: tf.train.CheckpointManager,
           phases: dict[str, float], target: int):
    """Trains the steps left to `target`, saving every `checkpoint_every`; the loop's result."""
    config, global_batch = job.config, job.config.batch_size
    writer = (tf.summary.create_file_writer(os.path.join(job.run_dir, artifacts.LOGS_DIR, "train"))
              if job.is_chief else tf.summary.create_noop_writer())
    start = time.perf_counter()
    try:
        result = train(
            train_step, iterator, restored.state, target, global_batch,
            checkpoint_every=config.checkpoint_every,
            save_checkpoint=lambda s: artifacts.save_checkpoint(manager, s),
            # Off a terminal the bar's carriage returns would flood the log: log lines instead.
            log_every=config.log_every, progress=config.progress and job.is_chief and sys.stdout.isatty(),
            summary_writer=writer,
        )
    except tf.errors.InvalidArgumentError as err:
        raise ValueError(training_error(err.message, job.metadata_path)) from None
    phases["train"] += time.perf_counter() - start
    return result


def _evaluate(job: _Job, model, eval_ds, phases: dict[str, float], predict_step=None) -> dict:
    """Eval metrics over `eval_steps` global batches, or the empty-split note when there is nothing to evaluate."""
    if job.eval_note:
        log.warning("%s", job.eval_note)
        return dict(eval_auc=None, eval_log_loss=None, eval_examples=0, eval_positive_rate=None,
                    eval_note=job.eval_note)
    start = time.perf_counter()
    metrics = evaluate(job.strategy, model, iter(eval_ds), job.fn_args.eval_steps,
                       max_examples=job.metadata.row_counts.get("eval"), predict_step=predict_step)
    phases["eval"] = phases.get("eval", 0.0) + time.perf_counter() - start
    return metrics


def _export(job: _Job, model) -> None:
    """The SavedModel into the serving dir, with the preprocessing assets beside metadata.json."""
    # Row sharding: the chief exports a copy with the tables gathered whole; the others only send their shards.
    if dynamic_tables.split_tables(model):
        export_model = dynamic_tables.whole_dynamic_model(job.strategy, model, job.metadata, job.config, job.is_chief)
    elif job.row_sharded:
        export_model = whole_table_model(job.strategy, model, job.metadata, job.config, job.is_chief)
    else:
        export_model = model
    if export_model is not None:
        path = job.metadata_path
        export_saved_model(export_model, job.metadata, job.serving_dir,
                           path if os.path.isdir(path) else os.path.dirname(path))


def _apply_path(optimizer, model) -> str | None:
    """How the embedding optimizer's sparse step ran on the first table: "fused kernel", or "TF ops: <why>"."""
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # under a loss-scale wrapper
    if not hasattr(optimizer, "apply_path") or not model.tables:
        return None
    table = model.tables[0].embeddings
    return optimizer.apply_path(getattr(table, "value", table))


def _exchange(model, steps: int) -> dict:
    """Row- and table-wise tables: which exchange their lookups used, and the bytes this worker sent per step."""
    sharded = [t for t in model.tables if hasattr(t, "exchange_kind")]
    if not sharded:
        return {"embedding_exchange": None, "exchange_bytes_per_step": None}
    sent = sum(int(getattr(t, "bytes_sent", 0) or 0) for t in sharded)
    return {"embedding_exchange": sharded[0].exchange_kind,
            "exchange_bytes_per_step": sent / steps if steps else None}


def _run_metrics(job: _Job, restored: Restored, result, phases: dict[str, float]) -> dict:
    """The metrics.json fields besides the eval metrics."""
    strategy, model, global_batch = job.strategy, restored.model, job.config.batch_size
    # The first step includes tracing; it is left out of the step time.
    timed = result.step_seconds[1:] or result.step_seconds
    mean_step = float(np.mean(timed)) if timed else float("nan")
    return dict(
        steps=int(restored.step.numpy()),
        resumed_from_step=restored.resumed_from,
        steps_this_run=result.steps_run,
        global_batch_size=global_batch,
        num_replicas=strategy.num_replicas_in_sync,
        num_workers=job.cluster.num_workers,
        strategy=("MultiWorkerMirroredStrategy" if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
                  else type(strategy).__name__),
        mean_step_seconds=mean_step,
        examples_per_second=global_batch / mean_step if timed else float("nan"),
        train_seconds=phases["train"],
        # Wall time of each phase of this run (the periodic checkpoints are inside "train").
        phase_seconds={k: round(v, 3) for k, v in phases.items()},
        final_train_loss=result.losses[-1][1] if result.losses else None,
        table_rows=[int(t.input_dim) if hasattr(t, "input_dim") else int(t.capacity) for t in model.tables],
        table_sharding=job.config.table_sharding,
        # Each table's placement and owner, as in plan.json (None for dynamic tables).
        table_plan=[[t.name, t.placement, t.owner] for t in job.plan.tables] if job.plan is not None else None,
        apply_path=_apply_path(restored.state.embedding_optimizer, model),
        # Row- and table-wise tables: "all_to_all" or "all_gather" (--exchange; EMBEDOPT_EXCHANGE overrides its
        # "auto"), and this worker's bytes.
        **_exchange(model, result.steps_run),
        embedding_rows_per_replica=rows_per_replica(strategy, model),
        # Per-variable sums (a sharded table's over all shards): equal on every worker when they stayed in sync.
        weights_checksum=weights_checksum(strategy, model),
        config=job.config.to_json(),
        serving_model_dir=job.fn_args.serving_model_dir,
        metadata_path=job.metadata_path,
        # Every preprocess output this run directory has trained on, with the step each began at.
        data_sources=restored.data_sources,
    )


def _write_outputs(job: _Job, metrics: dict, result) -> None:
    """The chief writes the eval scalars, the training curve and metrics.json; other workers drop their scratch."""
    if not job.is_chief:
        shutil.rmtree(job.scratch, ignore_errors=True)
        return
    if not job.eval_note:
        # Early stopping: every epoch's evaluation; else the one at the end.
        evaluations = metrics["stopping"].get("evaluations") or [dict(metrics, step=metrics["steps"])]
        with tf.summary.create_file_writer(os.path.join(job.run_dir, artifacts.LOGS_DIR, "eval")).as_default():
            for evaluation in evaluations:
                artifacts.write_scalar("auc", evaluation["eval_auc"], step=evaluation["step"])
                artifacts.write_scalar("log_loss", evaluation["eval_log_loss"], step=evaluation["step"])
    points = artifacts.merged_losses(job.run_dir, result.losses)
    metrics["training_curve"] = artifacts.plot_curve(
        os.path.join(job.run_dir, artifacts.CURVE_FILE), points,
        f"{job.config.optimizer} embeddings / {job.config.dense_optimizer} dense")
    artifacts.write_json(os.path.join(job.run_dir, artifacts.METRICS_FILE), metrics)
