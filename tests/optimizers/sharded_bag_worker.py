"""One worker of the row-sharded bag test (run as a subprocess, 2 of them); also the test's one-replica run.

Usage: TF_CONFIG=... python -m tests.optimizers.sharded_bag_worker OUT_DIR CASE [CASE ...]

A CASE is `optimizer:combiner[:weighted]`, e.g. `lazy_adam:mean`. For each
case the worker trains a `ShardedEmbedding` with that combiner (bags of ids,
ragged, their id counts different on the two workers) and a dense head under
MultiWorkerMirroredStrategy, each worker feeding its half of every global
batch, and saves the losses, the whole table and its slots (gathered with
`gather_table`) and the head kernel to OUT_DIR/<case>-worker<i>.npz.
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

GLOBAL_BATCH, VOCAB, DIM, STEPS, SEED = 8, 19, 3, 4, 5


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


def train(strategy, case: str, table_class, task: int = 0, num_tasks: int = 1) -> dict:
    """Trains `STEPS` steps, feeding this task's share of each global batch; the arrays the test compares."""
    name, combiner, *weighted = case.split(":")
    with strategy.scope():
        table = table_class(VOCAB, DIM, embeddings_initializer=optimizers.RowUniform(-0.5, 0.5, seed=SEED),
                            combiner=combiner)
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
    return dict(losses=np.array(losses), table=whole(table.embeddings), kernel=head.kernel.numpy(),
                local_rows=np.array(table.embeddings.shape[0]), **slots)


def main(out_dir, cases):
    task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    strategy = tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING))
    assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
    for case in cases:
        arrays = train(strategy, case, optimizers.ShardedEmbedding, task, 2)
        np.savez(os.path.join(out_dir, f"{case}-worker{task}.npz"), **arrays)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
