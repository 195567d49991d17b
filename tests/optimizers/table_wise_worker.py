"""One worker of the table_wise test (a subprocess, N of them): `sharded_worker`'s model with a `TableWiseEmbedding`.

Usage: TF_CONFIG=... python -m tests.optimizers.table_wise_worker OUT_DIR OWNER CASE [CASE ...]

For each case and exchange it trains `sharded_worker.train`'s tiny model with
the whole table on worker OWNER and saves the arrays to
OUT_DIR/<case>-<exchange>-worker<i>.npz.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import optimizers  # noqa: E402
from tests.optimizers.sharded_worker import EXCHANGES, train  # noqa: E402


def main(out_dir, owner, cases):
    task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    strategy = tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING))
    n = strategy.num_replicas_in_sync
    for case in cases:
        for exchange in EXCHANGES:
            arrays = train(strategy, case, optimizers.TableWiseEmbedding, task, n, exchange=exchange, owner=owner)
            np.savez(os.path.join(out_dir, f"{case}-{exchange}-worker{task}.npz"), **arrays)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
