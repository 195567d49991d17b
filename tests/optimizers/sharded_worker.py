"""One worker of the row-sharded one-hot table test (a subprocess, N of them); also the test's one-replica run.

Usage: TF_CONFIG=... python -m tests.optimizers.sharded_worker OUT_DIR CASE [CASE ...]

A CASE is `optimizer[:option=value]`, e.g. `lazy_adam:clipnorm=0.05`. For
each case and each exchange (`all_to_all`, `all_gather`) the worker trains
the same tiny model (a `ShardedEmbedding` of one-hot ids and a dense head,
`RowUniform` rows with one seed) under MultiWorkerMirroredStrategy, feeding
its share of every global batch. It saves the losses, the whole table and
its slots (gathered with `gather_table`), the head kernel, the shard's row
count and row ids, and the bytes the exchange sent, to
OUT_DIR/<case>-<exchange>-worker<i>.npz. `train(default strategy, case,
optimizers.SparseEmbedding)` is the same model on one replica.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import optimizers  # noqa: E402
from optimizers.sharded import gather_table, shard_spec  # noqa: E402

GLOBAL_BATCH, VOCAB, DIM, STEPS, IDS = 24, 23, 4, 5, 3  # 24 examples split evenly over 2 or 3 workers
SEED = 5
EXCHANGES = ("all_to_all", "all_gather")


def data():
    """Ids skewed to small values (hot rows repeat within and across replicas) and labels tied to them."""
    rng = np.random.default_rng(3)
    x = np.minimum(rng.zipf(1.4, size=(GLOBAL_BATCH * STEPS, IDS)) - 1, VOCAB - 1).astype(np.int64)
    y = ((x.sum(axis=1) % 3) == 0).astype(np.float32)
    return x, y


def local_ids(step: int, task: int, num_tasks: int) -> np.ndarray:
    """The ids worker `task` of `num_tasks` looks up at `step`."""
    share = GLOBAL_BATCH // num_tasks
    start = step * GLOBAL_BATCH + task * share
    return data()[0][start:start + share]


def parse_case(case: str):
    name, *options = case.split(":")
    kwargs = {"learning_rate": 0.05}
    for option in options:
        key, value = option.split("=")
        kwargs[key] = float(value)
    return name, kwargs


def train(strategy, case: str, table_class, task: int = 0, num_tasks: int = 1, **table_kwargs) -> dict:
    """Trains `STEPS` steps, feeding this task's share of each global batch; the arrays the test compares."""
    name, kwargs = parse_case(case)
    init = optimizers.RowUniform(-0.5, 0.5, seed=SEED)
    with strategy.scope():
        table = table_class(VOCAB, DIM, embeddings_initializer=init, **table_kwargs)
        head = keras.layers.Dense(1, kernel_initializer=keras.initializers.GlorotUniform(seed=1))
        table.build()
        head.build((None, IDS * DIM))
        emb_opt = optimizers.get(name, **kwargs)
        dense_opt = optimizers.get("sgd", learning_rate=0.05)
        emb_opt.build([table.embeddings])
        dense_opt.build(head.trainable_variables)

    def replica_step(xb, yb):
        with tf.GradientTape() as tape:
            logits = tf.squeeze(head(tf.reshape(table(xb), (-1, IDS * DIM))), -1)
            per_example = tf.nn.sigmoid_cross_entropy_with_logits(labels=yb, logits=logits)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=GLOBAL_BATCH)
        grads = tape.gradient(loss, [table.embeddings] + head.trainable_variables)
        assert isinstance(grads[0], tf.IndexedSlices), type(grads[0])
        emb_opt.apply_gradients([(grads[0], table.embeddings)])
        dense_opt.apply_gradients(zip(grads[1:], head.trainable_variables))
        return loss

    @tf.function
    def step(xb, yb):
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica_step, args=(xb, yb)), axis=None)

    x, y = data()
    share = GLOBAL_BATCH // num_tasks
    losses = []
    for start in range(0, len(x), GLOBAL_BATCH):
        mine = slice(start + task * share, start + (task + 1) * share)
        losses.append(float(step(tf.constant(x[mine]), tf.constant(y[mine]))))

    def whole(variable):
        spec = shard_spec(variable)
        if spec is None or spec.num_shards == 1:
            return variable.numpy()
        out = np.full((VOCAB,) + tuple(variable.shape[1:]), np.nan, np.float32)

        def keep(ids, rows):
            out[ids] = rows

        gather_table(strategy, variable, keep)
        return out

    slots = {f"slot_{slot}": whole(emb_opt.get_slot(table.embeddings, slot)) for slot in emb_opt.slot_names}
    arrays = dict(losses=np.array(losses), table=whole(table.embeddings), kernel=head.kernel.numpy(), **slots)
    if shard_spec(table.embeddings) is not None:
        arrays.update(local_rows=np.array(table.embeddings.shape[0]), shard_ids=table.spec.global_ids(),
                      bytes_sent=np.array(table.bytes_sent), exchange=np.array(table.exchange_kind))
    return arrays


def run_cases(out_dir, cases, train_fn, table_class, **table_kwargs):
    """This worker's part of a multi-worker test: `train_fn(strategy, case, table_class, task, n, exchange=...,
    **table_kwargs)` for each case and exchange, saved to OUT_DIR/<case>-<exchange>-worker<task>.npz."""
    task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    strategy = tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING))
    n = strategy.num_replicas_in_sync
    for case in cases:
        for exchange in EXCHANGES:
            arrays = train_fn(strategy, case, table_class, task, n, exchange=exchange, **table_kwargs)
            np.savez(os.path.join(out_dir, f"{case}-{exchange}-worker{task}.npz"), **arrays)


def reference_bytes(exchange, n, owner=None):
    """Bytes each worker sends over the whole run, from the ids alone (NumPy, per step, summed).

    all_to_all: (N - 1) x (W x (8 + 8 dim) + 32) per step, W the widest (worker, owner) count of distinct
    ids, an id's owner being id % N (row-sharded) or `owner` (a table_wise table); all_gather: a ring
    all-gather of the ids, (N - 1) x (4 + 8 c), and two ring all-reduces of the [global distinct, dim]
    float32 block, 2 (N - 1) / N of it each.
    """
    total = 0
    for step in range(STEPS):
        ids = [local_ids(step, t, n).ravel() for t in range(n)]
        if exchange == "all_to_all":
            owners = [np.unique(x) % n if owner is None else np.full(len(np.unique(x)), owner) for x in ids]
            widest = max(np.bincount(o, minlength=n).max() for o in owners)
            total += (n - 1) * (widest * (8 + 8 * DIM) + 32)
        else:
            distinct = len(np.unique(np.concatenate(ids)))
            total += (n - 1) * (4 + 8 * ids[0].size) + 2 * (2 * (n - 1) * distinct * DIM * 4 // n)
    return total


def assert_workers_match_one_replica(out_dir, n, cases, rtol, atol, check_worker):
    """Test side of `run_cases`: every worker's saved arrays equal one replica's on the global batch (a plain
    `SparseEmbedding`), for each case and exchange; `check_worker(case, exchange, i, arrays)` checks the rest."""
    start = optimizers.RowUniform(-0.5, 0.5, seed=SEED)((VOCAB, DIM))
    for case in cases:
        want = train(tf.distribute.get_strategy(), case, optimizers.SparseEmbedding)
        assert not np.allclose(want["table"], start.numpy()), f"{case}: training changed nothing"
        for exchange in EXCHANGES:
            for i in range(n):
                got = np.load(os.path.join(out_dir, f"{case}-{exchange}-worker{i}.npz"))
                assert str(got["exchange"]) == exchange
                for key in want:
                    np.testing.assert_allclose(got[key], want[key], rtol=rtol, atol=atol,
                                               err_msg=f"{case} {exchange} worker {i} {key}")
                check_worker(case, exchange, i, got)


def main(out_dir, cases):
    run_cases(out_dir, cases, train, optimizers.ShardedEmbedding)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
