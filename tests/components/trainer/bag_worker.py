"""One worker of the two-worker bag test (run as a subprocess, 2 of them).

Usage: TF_CONFIG=... python -m tests.components.trainer.bag_worker OUT_DIR CASE [CASE ...]

A CASE is `table_sharding:table_layout:optimizer`, e.g. `row:shared:lazy_adam`.
For each case the worker trains `bag_training`'s DLRM with multi-hot features
under MultiWorkerMirroredStrategy, each worker feeding its half of every
global batch, and saves the losses and every trainable variable (a
row-sharded table gathered whole with `gather_table`) to
OUT_DIR/<case>-worker<i>.npz.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from optimizers.sharded import gather_table, shard_spec  # noqa: E402
from tests.components.trainer import bag_training as bags  # noqa: E402


def parse_case(case: str):
    sharding, layout, optimizer = case.split(":")
    return bags.config(table_sharding=sharding, table_layout=layout, optimizer=optimizer)


def whole(strategy, variable) -> np.ndarray:
    spec = shard_spec(variable)
    if spec is None:
        return variable.numpy()
    out = np.full((spec.rows,) + tuple(variable.shape[1:]), np.nan, np.float32)

    def keep(ids, rows):
        out[ids] = rows

    gather_table(strategy, variable, keep)
    return out


def main(out_dir, cases):
    task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    strategy = tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING))
    assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
    data = bags.rows()
    for case in cases:
        losses, model, _ = bags.train(strategy, data, parse_case(case))
        arrays = {f"var{i}": whole(strategy, v) for i, v in enumerate(model.trainable_variables)}
        np.savez(os.path.join(out_dir, f"{case}-worker{task}.npz"), losses=np.array(losses),
                 local_rows=np.array([int(t.embeddings.shape[0]) for t in model.tables]), **arrays)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
