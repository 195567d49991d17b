"""One worker of the per-table placement test (a subprocess, N of them): `bag_training`'s DLRM under a table plan.

Usage: TF_CONFIG=... python -m tests.components.trainer.placement_worker OUT_DIR CASE [CASE ...]

A CASE is `table_sharding:optimizer:budget_bytes`, e.g. `auto:adagrad:23040`.
The worker plans the per-feature tables for N workers with the planner
(`components/trainer/table_plan.planned_tables`, `planner.plan_tables`),
trains `bag_training`'s model (two one-hot and two multi-hot features) under
MultiWorkerMirroredStrategy with that plan, each worker feeding its share of
every global batch, and saves the losses, every trainable variable (split
tables gathered whole), the plan's layout and the rows it held to
OUT_DIR/<case>-worker<i>.npz.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from components.trainer import planner  # noqa: E402
from components.trainer.table_plan import planned_tables  # noqa: E402
from tests.components.trainer import bag_training as bags  # noqa: E402
from tests.components.trainer.bag_worker import whole  # noqa: E402


def parse_case(case: str):
    sharding, optimizer, budget = case.split(":")
    return bags.config(table_sharding=sharding, table_layout="per_feature", optimizer=optimizer), int(budget)


def plan_for(case: str, num_workers: int) -> planner.Plan:
    config, budget = parse_case(case)
    return planner.plan_tables(planned_tables(bags.metadata(), config), num_workers, budget, config.table_sharding)


def main(out_dir, cases):
    task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    strategy = tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING))
    data = bags.rows()
    for case in cases:
        config, _ = parse_case(case)
        plan = plan_for(case, strategy.num_replicas_in_sync)
        losses, model, _ = bags.train(strategy, data, config, placements=plan.layout())
        arrays = {f"var{i}": whole(strategy, v) for i, v in enumerate(model.trainable_variables)}
        np.savez(os.path.join(out_dir, f"{case}-worker{task}.npz"), losses=np.array(losses),
                 placements=np.array([p for p, _ in plan.layout()]),
                 local_rows=np.array([int(t.embeddings.shape[0]) for t in model.tables]), **arrays)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
