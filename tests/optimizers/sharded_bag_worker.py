"""One worker of the row-sharded bag test (a subprocess, N of them); also the test's one-replica run.

Usage: TF_CONFIG=... python -m tests.optimizers.sharded_bag_worker OUT_DIR CASE [CASE ...]

A CASE is `optimizer:combiner[:weighted]`, e.g. `lazy_adam:mean`. For each
case and each exchange (`all_to_all`, `all_gather`) the worker trains a
`ShardedEmbedding` with that combiner (bags of ids, ragged, their id counts
different on the workers) and a dense head under MultiWorkerMirroredStrategy,
each worker feeding its share of every global batch, and saves the losses,
the whole table and its slots (gathered with `gather_table`), the head
kernel and the bytes the exchange sent to
OUT_DIR/<case>-<exchange>-worker<i>.npz.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import optimizers  # noqa: E402
from optimizers.sharded import gather_table, shard_spec  # noqa: E402

GLOBAL_BATCH, VOCAB, DIM, STEPS, SEED = 12, 19, 3, 4, 5  # 12 examples split evenly over 2 or 3 workers
EXCHANGES = ("all_to_all", "all_gather")


def data():
    """Bags of 0 to 6 Zipf ids (duplicates within and across bags, some empty), per-id weights, labels."""
    rng = np.random.default_rng(11)
    lengths = rng.integers(0, 7, size=GLOBAL_BATCH * STEPS)
    ids = np.minimum(rng.zipf(1.3, size=lengths.sum()) - 1, VOCAB - 1).astype(np.int64)
    weights = rng.uniform(0.5, 2.0, size=lengths.sum()).astype(np.float32)
    labels = (rng.uniform(size=len(lengths)) < 0.4).astype(np.float32)
    return lengths, ids, weights, labels


def batch(start: int, stop: int):
    """Examples [start, stop): ragged ids and weights, labels."""
    lengths, ids, weights, labels = data()
    first, mine = int(lengths[:start].sum()), lengths[start:stop]
    cut = slice(first, first + int(mine.sum()))
    return (tf.RaggedTensor.from_row_lengths(ids[cut], mine), tf.RaggedTensor.from_row_lengths(weights[cut], mine),
            tf.constant(labels[start:stop]))


def local_ids(step: int, task: int, num_tasks: int) -> np.ndarray:
    """The ids (all bags' together) worker `task` of `num_tasks` looks up at `step`."""
    share = GLOBAL_BATCH // num_tasks
    start = step * GLOBAL_BATCH + task * share
    lengths, ids, _, _ = data()
    first = int(lengths[:start].sum())
    return ids[first:first + int(lengths[start:start + share].sum())]


def train(strategy, case: str, table_class, task: int = 0, num_tasks: int = 1, **table_kwargs) -> dict:
    """Trains `STEPS` steps, feeding this task's share of each global batch; the arrays the test compares."""
    name, combiner, *weighted = case.split(":")
    with strategy.scope():
        table = table_class(VOCAB, DIM, embeddings_initializer=optimizers.RowUniform(-0.5, 0.5, seed=SEED),
                            combiner=combiner, **table_kwargs)
        head = keras.layers.Dense(1, kernel_initializer=keras.initializers.GlorotUniform(seed=1))
        table.build()
        head.build((None, DIM))
        emb_opt = optimizers.get(name, learning_rate=0.05)
        dense_opt = optimizers.get("sgd", learning_rate=0.05)
        emb_opt.build([table.embeddings])
        dense_opt.build(head.trainable_variables)

    def replica_step(ids, weights, labels):
        with tf.GradientTape() as tape:
            pooled = table(ids, weights) if weighted else table(ids)
            logits = tf.squeeze(head(pooled), -1)
            per_example = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=GLOBAL_BATCH)
        grads = tape.gradient(loss, [table.embeddings] + head.trainable_variables)
        assert isinstance(grads[0], tf.IndexedSlices), type(grads[0])
        emb_opt.apply_gradients([(grads[0], table.embeddings)])
        dense_opt.apply_gradients(zip(grads[1:], head.trainable_variables))
        return loss

    @tf.function
    def step(ids, weights, labels):
        losses = strategy.run(replica_step, args=(ids, weights, labels))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    share = GLOBAL_BATCH // num_tasks
    losses = []
    for start in range(0, GLOBAL_BATCH * STEPS, GLOBAL_BATCH):
        losses.append(float(step(*batch(start + task * share, start + (task + 1) * share))))

    def whole(variable):
        if shard_spec(variable) is None or shard_spec(variable).num_shards == 1:
            return variable.numpy()
        out = np.full((VOCAB,) + tuple(variable.shape[1:]), np.nan, np.float32)

        def keep(ids, rows):
            out[ids] = rows

        gather_table(strategy, variable, keep)
        return out

    slots = {f"slot_{slot}": whole(emb_opt.get_slot(table.embeddings, slot)) for slot in emb_opt.slot_names}
    arrays = dict(losses=np.array(losses), table=whole(table.embeddings), kernel=head.kernel.numpy(), **slots)
    if shard_spec(table.embeddings) is not None:
        arrays.update(local_rows=np.array(table.embeddings.shape[0]), bytes_sent=np.array(table.bytes_sent),
                      exchange=np.array(table.exchange_kind))
    return arrays


def main(out_dir, cases):
    from tests.optimizers.sharded_worker import run_cases

    run_cases(out_dir, cases, train, optimizers.ShardedEmbedding)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
