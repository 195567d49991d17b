"""One worker of the row-sharded table test (run as a subprocess, 2 of them).

Usage: TF_CONFIG=... python -m tests.optimizers.sharded_worker OUT_DIR CASE [CASE ...]

A CASE is `optimizer[:option=value]`, e.g. `lazy_adam:clipnorm=0.05`. For
each case the worker trains the same tiny model twice under
MultiWorkerMirroredStrategy, once with a `ShardedEmbedding` (row) and once
with a mirrored `SparseEmbedding` (mirrored), both initialized by
`RowUniform` with one seed, each worker feeding its half of every global
batch. It saves, per layout: the losses, the whole table and its slots (a
sharded one gathered with `gather_table`), the head kernel, the shard's row
count, and its shard's first row ids, to OUT_DIR/<case>-<layout>-worker<i>.npz.
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
from optimizers.sharded import gather_table  # noqa: E402

GLOBAL_BATCH, VOCAB, DIM, STEPS, IDS = 16, 23, 4, 5, 3
SEED = 5


def data():
    """Ids skewed to small values (hot rows repeat within and across replicas) and labels tied to them."""
    rng = np.random.default_rng(3)
    x = np.minimum(rng.zipf(1.4, size=(GLOBAL_BATCH * STEPS, IDS)) - 1, VOCAB - 1).astype(np.int64)
    y = ((x.sum(axis=1) % 3) == 0).astype(np.float32)
    return x, y


def parse_case(case: str):
    name, *options = case.split(":")
    kwargs = {"learning_rate": 0.05}
    for option in options:
        key, value = option.split("=")
        kwargs[key] = float(value)
    return name, kwargs


def train(strategy, layout, case, task):
    name, kwargs = parse_case(case)
    init = optimizers.RowUniform(-0.5, 0.5, seed=SEED)
    with strategy.scope():
        if layout == "row":
            table = optimizers.ShardedEmbedding(VOCAB, DIM, embeddings_initializer=init)
        else:
            table = optimizers.SparseEmbedding(VOCAB, DIM, embeddings_initializer=init)
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
        emb_opt.apply_gradients([(grads[0], table.embeddings)])
        dense_opt.apply_gradients(zip(grads[1:], head.trainable_variables))
        return loss

    @tf.function
    def step(xb, yb):
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica_step, args=(xb, yb)), axis=None)

    x, y = data()
    half = GLOBAL_BATCH // 2
    losses = []
    for start in range(0, len(x), GLOBAL_BATCH):
        mine = slice(start + task * half, start + (task + 1) * half)
        losses.append(float(step(tf.constant(x[mine]), tf.constant(y[mine]))))

    def whole(variable):
        if layout == "mirrored":
            return variable.numpy()
        out = np.full((VOCAB,) + tuple(variable.shape[1:]), np.nan, np.float32)

        def keep(ids, rows):
            out[ids] = rows

        gather_table(strategy, variable, keep)
        return out

    slots = {f"slot_{slot}": whole(emb_opt.get_slot(table.embeddings, slot)) for slot in emb_opt.slot_names}
    arrays = dict(losses=np.array(losses), table=whole(table.embeddings), kernel=head.kernel.numpy(),
                  local_rows=np.array(table.embeddings.shape[0]), iterations=np.array(int(emb_opt.iterations.numpy())),
                  **slots)
    if layout == "row":
        arrays["shard_ids"] = table.spec.global_ids()
    return arrays


def main(out_dir, cases):
    task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    strategy = tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING))
    assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
    for case in cases:
        for layout in ("row", "mirrored"):
            arrays = train(strategy, layout, case, task)
            np.savez(os.path.join(out_dir, f"{case}-{layout}-worker{task}.npz"), **arrays)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
