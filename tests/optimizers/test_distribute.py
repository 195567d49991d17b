"""Under MirroredStrategy (2 logical CPUs) a step equals one replica on the global batch."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.optimizers.cases import CASES
from tests.optimizers.helpers import make

GLOBAL_BATCH, VOCAB, DIM, STEPS = 16, 30, 4, 3


def train(strategy, case, x, y, **opt_kwargs):
    rng = np.random.default_rng(11)
    table0 = rng.normal(size=(VOCAB, DIM)).astype(np.float32)
    kernel0 = rng.normal(size=(3 * DIM, 1)).astype(np.float32)
    import optimizers

    with strategy.scope():
        embedding = optimizers.SparseEmbedding(VOCAB, DIM)
        head = keras.layers.Dense(1)
        embedding.build()
        head.build((None, 3 * DIM))
        embedding.embeddings.assign(table0)
        head.kernel.assign(kernel0)
        variables = embedding.trainable_variables + head.trainable_variables
        opt = make(case, **opt_kwargs)
        opt.build(variables)

    def replica_step(xb, yb):
        with tf.GradientTape() as tape:
            logits = tf.squeeze(head(tf.reshape(embedding(xb), (-1, 3 * DIM))), -1)
            per_example = tf.nn.sigmoid_cross_entropy_with_logits(labels=yb, logits=logits)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=GLOBAL_BATCH)
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))

    @tf.function
    def step(batch):
        strategy.run(replica_step, args=batch)

    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    for batch in strategy.experimental_distribute_dataset(dataset):
        step(batch)
    replicas = [[t.numpy() for t in strategy.experimental_local_results(v.value)] for v in variables]
    slots = [[t.numpy() for t in strategy.experimental_local_results(v.value)] for v in opt.variables]
    return replicas, slots, int(opt.iterations.numpy())


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("opt_kwargs", [{}, {"clipnorm": 0.05}], ids=["plain", "clipnorm"])
def test_mirrored_matches_single_replica(case, opt_kwargs):
    rng = np.random.default_rng(5)
    # Few ids, so rows repeat within and across replicas (duplicates to sum).
    x = rng.integers(0, 10, size=(GLOBAL_BATCH * STEPS, 3)).astype(np.int64)
    y = rng.integers(0, 2, size=GLOBAL_BATCH * STEPS).astype(np.float32)
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert mirrored.num_replicas_in_sync == 2
    got_vars, got_slots, got_steps = train(mirrored, case, x, y, **opt_kwargs)
    want_vars, want_slots, want_steps = train(tf.distribute.get_strategy(), case, x, y, **opt_kwargs)
    assert got_steps == want_steps == STEPS
    for got, (want,) in zip(got_vars + got_slots, want_vars + want_slots):
        assert len(got) == 2
        np.testing.assert_array_equal(got[0], got[1])  # replicas stay in sync
        np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-6)
    # The step moved the weights: the comparison is not between two no-ops.
    assert not np.allclose(want_vars[0][0], np.random.default_rng(11).normal(size=(VOCAB, DIM)))
