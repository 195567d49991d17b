"""A run's table plan: the planner's inputs from the metadata and config, its budget agreed by every worker, plan.json.

Every worker computes the same plan (same sizes, N and budget: the default
budget, what each device reports, is the smallest over the workers, agreed
with one all-gather), so their tables and collectives match. The chief logs
it before training and writes `plan.json` next to the checkpoints once the
restore has passed; a restart under another plan or worker count reshards
the checkpoint onto its own (components/trainer/reshard.py). `table_placements` and `table_layer` turn a plan's
layout into the model's layers (`SparseEmbedding`, `ShardedEmbedding`,
`TableWiseEmbedding`).
"""

from __future__ import annotations

import functools
import logging
import os

import tensorflow as tf

import optimizers

from components.trainer import planner
from components.trainer.fn_args import TrainerConfig

log = logging.getLogger(__name__)

PLAN_FILE = "plan.json"
SHARED_TABLE = "shared_table"


def planned_tables(metadata, config: TrainerConfig, num_workers: int = 1) -> list[planner.Table]:
    """The model's fixed tables as the planner sees them (one per feature, or the one shared table)."""
    dim = config.embedding_dim + (1 if config.wide else 0)
    slots = planner.slot_columns(config.optimizer, dim)
    sizes = [int(metadata.vocab_sizes[key]) for key in metadata.categorical_keys]
    # One id per example and feature (a bag counts as one: its size is not in the metadata).
    local = config.batch_size // max(1, num_workers)
    if config.table_layout == "shared":
        return [planner.Table(SHARED_TABLE, sum(sizes), dim, slots, local * len(sizes))]
    return [planner.Table(f"table_{key}", rows, dim, slots, local)
            for key, rows in zip(metadata.categorical_keys, sizes)]


def agreed_budget(strategy, config: TrainerConfig) -> int:
    """`--memory-budget-per-worker`, else the least memory any worker reports (one all-gather)."""
    if config.memory_budget_per_worker is not None:
        return config.memory_budget_per_worker
    from components.trainer.sharding import available_memory_bytes, gather_per_replica

    local = available_memory_bytes()
    if strategy.num_replicas_in_sync == 1:
        return local
    return min(gather_per_replica(strategy, lambda: tf.constant([local], tf.int64)))


def make_plan(strategy, metadata, config: TrainerConfig) -> planner.Plan | None:
    """This run's plan; None for dynamic tables (one worker, never sharded).

    Raises:
        planner.PlanError: the tables do not fit the budget (the message names the table).
    """
    if config.table_kind != "fixed":
        return None
    tables = planned_tables(metadata, config, strategy.num_replicas_in_sync)
    return planner.plan_tables(tables, strategy.num_replicas_in_sync, agreed_budget(strategy, config),
                               config.table_sharding)


def plan_path(model_run_dir: str) -> str:
    from components.trainer import artifacts

    return os.path.join(model_run_dir, artifacts.CHECKPOINT_DIR, PLAN_FILE)


def write_plan(model_run_dir: str, plan: planner.Plan) -> None:
    path = plan_path(model_run_dir)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path + ".tmp", "w") as f:
        f.write(plan.to_json())
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)


def table_placements(table_sharding: str, placements, count: int) -> tuple:
    """`(placement, owner)` per table: `placements` (a plan's layout), else `table_sharding` for every table."""
    if placements is not None:
        placements = tuple((planner.canonical(p), o) for p, o in placements)
        if len(placements) != count:
            raise ValueError(f"placements {placements} must give one (placement, owner) per table ({count})")
        return placements
    placement = planner.canonical(table_sharding)
    if placement in (planner.AUTO, planner.TABLE_WISE):
        raise ValueError(f"table_sharding {table_sharding!r} needs a plan: pass `placements` "
                         "(components/trainer/planner.py)")
    return ((placement, None),) * count


def table_layer(placement: str, owner: int | None, exchange: str):
    """The layer class of a placement, with the arguments it takes besides the table's own."""
    if placement == planner.DATA_PARALLEL:
        return optimizers.SparseEmbedding
    if placement == planner.ROW_WISE:
        return functools.partial(optimizers.ShardedEmbedding, exchange=exchange)
    return functools.partial(optimizers.TableWiseEmbedding, owner=owner, exchange=exchange)
