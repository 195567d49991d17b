"""One worker of the all-to-all test (run as a subprocess, N of them, TF_CONFIG on localhost).

Usage: TF_CONFIG=... python -m tests.optimizers.all_to_all_worker OUT_DIR

Under MultiWorkerMirroredStrategy (RING) the worker runs, in one `tf.function`:
  1. a ragged `AllToAll` of `block(task, n)` with `send_counts(task, n)` rows
     per destination (some zero), and its gradient for the loss
     `sum(received * loss_weights(task, received rows))`;
  2. `lookup_rows` of `batch_ids(task)` from a row-sharded table
     (`table(n)` rows with `id % n == task`), and the gradient on the shard
     for the loss `sum(rows * row_weights(task))`.
It saves what it got and the bytes it sent to OUT_DIR/worker<task>.npz.
The data functions are plain NumPy so the test can rebuild every input.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

WIDTH, VOCAB, DIM, LOCAL_BATCH = 3, 100_000, 8, 512
TIMEOUT_S = 60.0


def send_counts(task: int, n: int) -> np.ndarray:
    """Rows task sends to each destination: ragged, with a zero to its own successor."""
    counts = np.random.default_rng(10 * n + task).integers(1, 6, size=n)
    counts[(task + 1) % n] = 0
    return counts.astype(np.int64)


def block(task: int, n: int) -> np.ndarray:
    return (1000.0 * task + np.arange(send_counts(task, n).sum() * WIDTH, dtype=np.float32)).reshape(-1, WIDTH)


def loss_weights(task: int, rows: int) -> np.ndarray:
    return (1.0 + task + np.arange(rows * WIDTH, dtype=np.float32).reshape(rows, WIDTH) / 7.0)


def batch_ids(task: int) -> np.ndarray:
    """A local batch of uniform ids with repeats (within this batch and, by chance, across workers)."""
    ids = np.random.default_rng(100 + task).integers(0, VOCAB, size=LOCAL_BATCH)
    ids[:16] = ids[16:32]
    return ids.astype(np.int64)


def row_weights(task: int) -> np.ndarray:
    return np.random.default_rng(200 + task).normal(size=(LOCAL_BATCH, DIM)).astype(np.float32)


def table_rows(ids: np.ndarray) -> np.ndarray:
    """Row `i` of the whole table: a function of the id, so no worker needs the rest."""
    return (np.asarray(ids, np.float32)[:, None] * 0.001 + np.arange(DIM, dtype=np.float32)[None, :])


def main(out_dir: str) -> None:
    import tensorflow as tf

    from optimizers.all_to_all import AllToAll, lookup_rows
    from optimizers.sharded import local_variables

    config = json.loads(os.environ["TF_CONFIG"])
    task, n = config["task"]["index"], len(config["cluster"]["worker"])
    strategy = tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING, timeout_seconds=TIMEOUT_S))
    assert strategy.num_replicas_in_sync == n, strategy.num_replicas_in_sync
    with strategy.scope():
        exchange = AllToAll(strategy, timeout_s=TIMEOUT_S)
        with local_variables(strategy.extended.worker_devices[0]):
            shard = tf.Variable(table_rows(task + n * np.arange(-(-VOCAB // n))))

    values, counts = tf.constant(block(task, n)), tf.constant(send_counts(task, n))
    ids, weights = tf.constant(batch_ids(task)), tf.constant(row_weights(task))

    @tf.function
    def step():
        def replica():
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(values)
                got = exchange(values, counts)
                rows = tf.shape(got.values)[0]
                w = 1.0 + float(task) + tf.reshape(tf.range(rows * WIDTH, dtype=tf.float32), [rows, WIDTH]) / 7.0
                loss = tf.reduce_sum(got.values * w)
                looked_up, lookup_bytes = lookup_rows(exchange, shard, ids, n)
                lookup_loss = tf.reduce_sum(looked_up * weights)
            grad = tape.gradient(loss, values)
            shard_grad = tape.gradient(lookup_loss, shard)
            return (got.values, got.counts, got.bytes_sent, grad, looked_up, lookup_bytes,
                    tf.convert_to_tensor(shard_grad))

        return [strategy.experimental_local_results(t)[0] for t in strategy.run(replica)]

    names = ["received", "received_counts", "bytes_sent", "grad", "rows", "lookup_bytes", "shard_grad"]
    results = {name: t.numpy() for name, t in zip(names, step())}
    np.savez(os.path.join(out_dir, f"worker{task}.npz"), **results)


if __name__ == "__main__":
    main(sys.argv[1])
