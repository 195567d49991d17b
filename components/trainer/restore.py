"""Build the model and optimizers in the strategy's scope and restore the latest checkpoint, if any.

With row- or table-wise tables every worker saves and restores its own part;
with every table data_parallel the chief's checkpoint serves all
(checkpoint_places.py). A checkpoint written under another table plan or
worker count is resharded onto this run's first (reshard.py). The chief
(and with split tables every worker) first deletes the temp folders of
checkpoint saves that a kill interrupted.

Before restoring, the chief checks that the checkpoint fits this run (the
model, optimizers and id mapping recorded in `run_record.json`,
resume_check.py) and every worker that each optimizer slot lands in the
slot of the same name (checkpoint_slots.py).
"""

from __future__ import annotations

import dataclasses
import logging
import os

import tensorflow as tf

from components.trainer import artifacts, resume_check, table_plan
from components.trainer.checkpoint_places import CheckpointPlace, place_for
from components.trainer.checkpoint_slots import check_slots_by_name
from components.trainer.fn_args import TrainerConfig
from components.trainer.loop import TrainState, build_optimizers
from components.trainer.loss_scale import DynamicLossScale
from components.trainer.model import build_model
from components.trainer.reshard import reshard
from components.trainer.sharding import barrier

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Restored:
    """The training state, ready to train: `resumed_from` is its step (0 for a fresh run)."""

    state: TrainState
    checkpoint: tf.train.Checkpoint
    place: CheckpointPlace  # where this worker's checkpoints go
    resumed_from: int
    data_sources: list[dict] = dataclasses.field(default_factory=list)  # chief: every data source trained on

    @property
    def model(self):
        return self.state.model

    @property
    def step(self) -> tf.Variable:
        return self.state.step


def build_state(strategy, metadata, config: TrainerConfig, plan=None) -> TrainState:
    with strategy.scope():
        model = build_model(metadata, config, placements=plan.layout() if plan is not None else None)
        embedding_optimizer, dense_optimizer = build_optimizers(model, config, config.mixed_precision)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        return TrainState(model, embedding_optimizer, dense_optimizer, step,
                          DynamicLossScale() if config.mixed_precision else None)


def build_and_restore(strategy, metadata, config: TrainerConfig, model_run_dir: str, train_steps: int | None,
                      is_chief: bool, metadata_path: str | None = None, plan=None) -> Restored:
    """Raises ValueError when the checkpoint is past `train_steps` (None: early stopping, no fixed end), or does
    not fit this run (another model, optimizer or id mapping; see resume_check.py)."""
    state = build_state(strategy, metadata, config, plan)
    checkpoint = state.checkpoint()
    row_sharded = state.model.sharded
    # Split tables: every worker saves and restores its own shard; mirrored: the chief's checkpoint serves all.
    place = place_for(os.path.join(model_run_dir, artifacts.CHECKPOINT_DIR), state.model)
    if is_chief or row_sharded:
        for path, size in artifacts.remove_checkpoint_temps(place.directory):
            log.info("removed %s (%.1f MB), left by a checkpoint save that was interrupted", path, size / 1e6)
    point = place.resume_point()
    latest = point.path if point else None
    record, sources = None, []
    if is_chief and metadata_path:
        step = point.step if point else 0
        record = resume_check.make_record(config, metadata, metadata_path, state.embedding_optimizer,
                                          state.dense_optimizer)
        sources = resume_check.check_resume(model_run_dir, record, resume_check.data_source(metadata, metadata_path,
                                                                                            step), point is not None, step)
    if point and point.source is not None and state.model.table_kind == "dynamic":
        raise ValueError(
            f"the checkpoint of step {point.step} was written with dynamic tables {point.source.layout.describe()}, "
            f"and this run's are {place.layout.describe()}: dynamic tables resume only with the --table-sharding "
            "and worker count they were written with (their keys are owned by hash, not by id). Resume with "
            "those, or use a new model_run_dir")
    if point and point.source is not None:
        barrier(strategy)  # every worker has chosen its resume point before any writes
        if is_chief:
            place.write_layout()  # before any worker writes a checkpoint into the folder
        barrier(strategy)
        log.info("resharding the checkpoint of step %d from %s onto %s", point.step,
                 point.source.layout.describe(), place.layout.describe())
        reshard(place, checkpoint, point, state.model.tables, [state.embedding_optimizer, state.dense_optimizer],
                write=place.layout.split or is_chief)
        if not place.layout.split:
            barrier(strategy)  # the chief has written the one checkpoint that every worker restores
    elif is_chief:
        place.write_layout()
    if latest:
        check_slots_by_name(latest, {"embedding_optimizer": state.embedding_optimizer,
                                     "dense_optimizer": state.dense_optimizer})
        checkpoint.restore(latest).assert_existing_objects_matched()
    if is_chief:
        place.record_layouts()  # the folders from before layout.json, while plan.json still says their plan
    if record is not None:
        resume_check.write_record(model_run_dir, record, sources)
    if is_chief and plan is not None:
        table_plan.write_plan(model_run_dir, plan)
    resumed_from = int(state.step.numpy())
    if train_steps is not None and resumed_from > train_steps:
        raise ValueError(f"checkpoint {latest} is at step {resumed_from}, past train_steps={train_steps}; "
                         "use a new model_run_dir or more steps")
    if resumed_from:
        log.info("resumed from checkpoint %s at step %d", latest, resumed_from)
    return Restored(state, checkpoint, place, resumed_from, sources)
