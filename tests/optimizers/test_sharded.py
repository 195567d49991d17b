"""Row-sharded tables: `RowUniform`, `ShardedEmbedding`, and sharded == mirrored with 2 real workers."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import optimizers
from tests.optimizers.helpers import run_two_workers
from optimizers.sharded import shard_spec
from tests.optimizers import sharded_worker

# Each optimizer the issue names, plus clipping that needs the global norm, plus exact (non-lazy) Adam.
CASES = ["lazy_adam", "lazy_adam:clipnorm=0.02", "adagrad", "adagrad:global_clipnorm=0.02", "rowwise_adagrad",
         "ftrl", "adam"]
# Float32 state after 5 steps; sums over the replicas run in another order than the mirrored concat + dedup.
RTOL, ATOL = 1e-5, 1e-7


# -- RowUniform ----------------------------------------------------------


def test_row_uniform_any_rows_equal_the_full_tables_rows():
    init = optimizers.RowUniform(-0.5, 0.5, seed=7)
    table = init((1000, 6)).numpy()
    picked = np.array([999, 3, 500, 3, 0])
    np.testing.assert_array_equal(init.rows(picked, 6).numpy(), table[picked])
    # A shard of 3 is rows 1, 4, 7, ...
    np.testing.assert_array_equal(init.rows(np.arange(1, 1000, 3), 6).numpy(), table[1::3])


def test_row_uniform_is_uniform_in_its_range():
    values = optimizers.RowUniform(-2.0, 1.0, seed=1)((20_000, 8)).numpy().ravel()
    assert values.min() >= -2.0 and values.max() < 1.0
    # Mean -0.5 and variance 9/12 of U(-2, 1); 160k draws: standard errors 0.0022 and 0.0013.
    assert abs(values.mean() + 0.5) < 0.01
    assert abs(values.var() - 0.75) < 0.01
    # Neighbouring elements are not correlated.
    assert abs(np.corrcoef(values[:-1], values[1:])[0, 1]) < 0.01


def test_row_uniform_seed_and_width_matter():
    a = optimizers.RowUniform(seed=0)((10, 4)).numpy()
    assert not np.array_equal(a, optimizers.RowUniform(seed=1)((10, 4)).numpy())
    np.testing.assert_array_equal(a, optimizers.RowUniform(seed=0)((10, 4)).numpy())


def test_row_uniform_config_roundtrip():
    init = optimizers.RowUniform(-0.1, 0.3, seed=9)
    again = keras.initializers.deserialize(keras.initializers.serialize(init))
    np.testing.assert_array_equal(again((5, 3)).numpy(), init((5, 3)).numpy())


@pytest.mark.parametrize("kwargs, message", [
    ({"minval": 1.0, "maxval": 1.0}, "minval < maxval"),
    ({"minval": float("nan")}, "minval < maxval"),
    ({"seed": -1}, "seed"),
    ({"seed": 1.5}, "seed"),
])
def test_row_uniform_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        optimizers.RowUniform(**kwargs)


# -- ShardedEmbedding in one process ---------------------------------------


def test_single_replica_sharded_embedding_is_the_whole_table():
    init = optimizers.RowUniform(-1.0, 1.0, seed=2)
    layer = optimizers.ShardedEmbedding(11, 3, embeddings_initializer=init)
    ids = tf.constant([[0, 10], [4, 4]])
    out = layer(ids).numpy()
    table = init((11, 3)).numpy()
    np.testing.assert_array_equal(out, table[ids.numpy()])
    assert shard_spec(layer.embeddings).num_shards == 1
    assert layer.embeddings.shape == (11, 3)


def test_sharded_embedding_gradient_is_indexed_slices():
    layer = optimizers.ShardedEmbedding(11, 3)
    layer.build()
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(tf.constant([1, 5, 1])))
    grad = tape.gradient(loss, layer.embeddings.value)
    assert isinstance(grad, tf.IndexedSlices)


def test_sharded_embedding_refuses_several_replicas_in_one_process(mirrored_strategy):
    with mirrored_strategy.scope():
        layer = optimizers.ShardedEmbedding(10, 2)
        with pytest.raises(ValueError, match="one replica per process.*--local-workers"):
            layer.build()


def test_sharded_embedding_needs_a_row_initializer():
    with pytest.raises(ValueError, match="RowUniform"):
        optimizers.ShardedEmbedding(10, 2, embeddings_initializer="uniform")


def test_sharded_embedding_checks_ids():
    layer = optimizers.ShardedEmbedding(10, 2, name="big")
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"ShardedEmbedding 'big': ids must be in \[0, 10\)"):
        layer(tf.constant([3, 10]))


@pytest.mark.parametrize("name", sorted(optimizers.OPTIMIZERS))
def test_single_shard_path_equals_the_mirrored_path(name):
    """With one replica, the shard path (local slots, in-replica update, all-reduced flags and norms)
    must give exactly what the ordinary path gives on the same table."""
    init = optimizers.RowUniform(-0.5, 0.5, seed=4)
    ids = tf.constant([[1, 2, 2], [7, 1, 0]])
    results = []
    for layer in (optimizers.ShardedEmbedding(9, 3, embeddings_initializer=init),
                  optimizers.SparseEmbedding(9, 3, embeddings_initializer=init)):
        layer.build()
        opt = optimizers.get(name, learning_rate=0.1, clipnorm=0.3)
        opt.build([layer.embeddings])
        for step in range(3):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.square(layer(ids) - float(step)))
            opt.apply_gradients([(tape.gradient(loss, layer.embeddings), layer.embeddings)])
        results.append([layer.embeddings.numpy()] + [v.numpy() for v in opt.variables])
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_single_shard_nan_gradient_is_refused_and_skipped():
    layer = optimizers.ShardedEmbedding(5, 2)
    layer.build()
    before = layer.embeddings.numpy()
    for nonfinite in ("raise", "skip"):
        opt = optimizers.get("lazy_adam", nonfinite=nonfinite)
        opt.build([layer.embeddings])
        grad = tf.IndexedSlices(tf.constant([[np.nan, 1.0]]), tf.constant([2]), tf.constant([3, 2]))
        if nonfinite == "raise":
            with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or Inf"):
                opt.apply_gradients([(grad, layer.embeddings)])
        else:
            opt.apply_gradients([(grad, layer.embeddings)])
            assert int(opt.skipped_steps.numpy()) == 1
        np.testing.assert_array_equal(layer.embeddings.numpy(), before)


def test_ema_is_refused_for_shards():
    layer = optimizers.ShardedEmbedding(5, 2)
    layer.build()
    with pytest.raises(ValueError, match="use_ema"):
        optimizers.get("adam", use_ema=True).build([layer.embeddings])


# -- two real workers ----------------------------------------------------------


@pytest.mark.slow
def test_row_sharded_matches_mirrored_with_two_workers(tmp_path):
    run_two_workers("tests.optimizers.sharded_worker", str(tmp_path), *CASES, timeout=300)
    for case in CASES:
        row = [np.load(tmp_path / f"{case}-row-worker{i}.npz") for i in range(2)]
        mirrored = [np.load(tmp_path / f"{case}-mirrored-worker{i}.npz") for i in range(2)]
        init = optimizers.RowUniform(-0.5, 0.5, seed=sharded_worker.SEED)((sharded_worker.VOCAB, sharded_worker.DIM))
        assert not np.allclose(mirrored[0]["table"], init.numpy()), f"{case}: training changed nothing"
        for key in mirrored[0].files:
            if key == "local_rows":
                continue
            np.testing.assert_allclose(row[0][key], mirrored[0][key], rtol=RTOL, atol=ATOL, err_msg=f"{case} {key}")
            # Every worker ends with the same gathered state.
            np.testing.assert_array_equal(row[1][key], row[0][key], err_msg=f"{case} {key}")
        for i in range(2):
            # Replica i holds ids i, i + 2, ...: ceil(23 / 2) = 12 rows, half of the mirrored table's 23.
            assert int(row[i]["local_rows"]) == math.ceil(sharded_worker.VOCAB / 2)
            assert int(mirrored[i]["local_rows"]) == sharded_worker.VOCAB
            np.testing.assert_array_equal(row[i]["shard_ids"], np.arange(i, 2 * 12, 2))


@pytest.mark.parametrize("cls", [optimizers.SparseEmbedding, optimizers.ShardedEmbedding])
def test_row_uniform_table_built_by_keras_tracing_gets_its_rows(cls):
    """A layer without `build` is built by Keras tracing `call` in a StatelessScope, where variables are
    created late: the chunked fill must not run there, nor leave a second variable behind."""
    init = optimizers.RowUniform(-1.0, 1.0, seed=6)

    class Wrapper(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.table = cls(13, 3, embeddings_initializer=init)

        def call(self, ids):
            return self.table(ids)

    layer = Wrapper()
    layer(tf.constant([2]))
    assert len(layer.weights) == 1
    np.testing.assert_array_equal(layer.table.embeddings.numpy(), init((13, 3)).numpy())


def test_filled_mirrored_table_equals_the_initializers(mirrored_strategy):
    init = optimizers.RowUniform(-1.0, 1.0, seed=8)
    with mirrored_strategy.scope():
        table = optimizers.SparseEmbedding(1000, 5, embeddings_initializer=init)
        table.build()
    for copy in table.embeddings.value.values:  # every replica's copy
        np.testing.assert_array_equal(copy.numpy(), init((1000, 5)).numpy())
