"""The tiny embedding model and data shared by the distribution tests.

Three ids per example from a small vocabulary, so rows repeat within and
across replicas (duplicates to sum), a linear head, and a replica step that
scales the loss by the global batch size, as a custom loop under
`tf.distribute` must.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

GLOBAL_BATCH, VOCAB, DIM, STEPS = 16, 20, 4, 3


def data():
    rng = np.random.default_rng(21)
    x = rng.integers(0, 8, size=(GLOBAL_BATCH * STEPS, 3)).astype(np.int64)
    y = rng.integers(0, 2, size=GLOBAL_BATCH * STEPS).astype(np.float32)
    return x, y


def initial_weights():
    rng = np.random.default_rng(11)
    return rng.normal(size=(VOCAB, DIM)).astype(np.float32), rng.normal(size=(3 * DIM, 1)).astype(np.float32)


def build(strategy, make_optimizer):
    """Variables, optimizer and a replica step, made inside `strategy.scope()`."""
    import optimizers

    table0, kernel0 = initial_weights()
    with strategy.scope():
        embedding = optimizers.SparseEmbedding(VOCAB, DIM)
        head = keras.layers.Dense(1)
        embedding.build()
        head.build((None, 3 * DIM))
        embedding.embeddings.assign(table0)
        head.kernel.assign(kernel0)
        variables = embedding.trainable_variables + head.trainable_variables
        opt = make_optimizer()
        opt.build(variables)

    def replica_step(xb, yb):
        with tf.GradientTape() as tape:
            logits = tf.squeeze(head(tf.reshape(embedding(xb), (-1, 3 * DIM))), -1)
            per_example = tf.nn.sigmoid_cross_entropy_with_logits(labels=yb, logits=logits)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=GLOBAL_BATCH)
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))

    return variables, opt, replica_step
