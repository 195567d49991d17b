"""One worker of the MultiWorkerMirroredStrategy test (run as a subprocess).

Usage: TF_CONFIG=... python mwms_worker.py OUT_DIR OPTIMIZER [OPTIMIZER ...]

Trains the shared tiny model with each optimizer in a custom loop, each worker
feeding its half of every global batch, and saves the final variables and
slots to OUT_DIR/<optimizer>-worker<i>.npz.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import optimizers  # noqa: E402
from tests.optimizers import tiny_model  # noqa: E402


def main(out_dir, names):
    task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    strategy = tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING
        )
    )
    assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
    x, y = tiny_model.data()
    half = tiny_model.GLOBAL_BATCH // 2
    for name in names:
        variables, opt, replica_step = tiny_model.build(
            strategy, lambda: optimizers.get(name, learning_rate=0.05, clipnorm=0.5)
        )

        @tf.function
        def step(xb, yb):
            strategy.run(replica_step, args=(xb, yb))

        for start in range(0, len(x), tiny_model.GLOBAL_BATCH):
            mine = slice(start + task * half, start + (task + 1) * half)
            step(tf.constant(x[mine]), tf.constant(y[mine]))
        arrays = {f"var{i}": v.numpy() for i, v in enumerate(variables)}
        arrays.update({f"opt{i}": v.numpy() for i, v in enumerate(opt.variables)})
        np.savez(os.path.join(out_dir, f"{name}-worker{task}.npz"), **arrays)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
