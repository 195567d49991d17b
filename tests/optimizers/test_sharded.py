"""Row-sharded tables: `RowUniform`, `ShardedEmbedding`, and both exchanges == one replica with 2 and 3 real workers."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import optimizers
from optimizers.sharded import shard_spec
from tests.optimizers import sharded_worker
from tests.optimizers.worker_processes import run_workers

# Each optimizer the issue names, plus clipping that needs the global norm, plus exact (non-lazy) Adam.
CASES = ["sgd", "lazy_adam", "lazy_adam:clipnorm=0.02", "adagrad", "adagrad:global_clipnorm=0.02", "rowwise_adagrad",
         "ftrl", "adam"]
CASES_3 = ["sgd", "ftrl"]  # 3 workers: fewer cases, the shapes of the exchange differ
# Float32 state after 5 steps; the replicas' sums run in another order than one replica's dedup.
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


def test_exchange_config_roundtrip_and_validation(monkeypatch):
    monkeypatch.delenv("EMBEDOPT_EXCHANGE", raising=False)
    layer = optimizers.ShardedEmbedding(9, 2, exchange="all_gather")
    assert keras.layers.deserialize(keras.layers.serialize(layer)).exchange == "all_gather"
    layer.build()
    assert layer.exchange_kind == "all_gather" and layer.bytes_sent == 0
    auto = optimizers.ShardedEmbedding(9, 2)
    monkeypatch.setenv("EMBEDOPT_EXCHANGE", "all_gather")
    auto.build()
    assert auto.exchange == "auto" and auto.exchange_kind == "all_gather"
    # The byte counter is not a layer weight, so checkpoints hold what they held before.
    assert [w.name for w in auto.weights] == ["embeddings"]
    with pytest.raises(ValueError, match="exchange.*'ring'"):
        optimizers.ShardedEmbedding(9, 2, exchange="ring")


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


# -- real workers, both exchanges ---------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("n, cases", [(2, CASES), (3, CASES_3)], ids=["2-workers", "3-workers"])
def test_row_sharded_matches_one_replica(tmp_path, n, cases):
    """Each exchange, on n real workers, trains to the weights and slots of one replica on the global batch."""
    run_workers("tests.optimizers.sharded_worker", n, str(tmp_path), *cases, timeout=300)

    def check_worker(case, exchange, i, got):
        # Replica i holds ids i, i + n, ...: ceil(23 / n) rows.
        assert int(got["local_rows"]) == math.ceil(sharded_worker.VOCAB / n)
        np.testing.assert_array_equal(got["shard_ids"], i + n * np.arange(math.ceil(sharded_worker.VOCAB / n)))
        assert int(got["bytes_sent"]) == sharded_worker.reference_bytes(exchange, n), (case, exchange, i)

    sharded_worker.assert_workers_match_one_replica(str(tmp_path), n, cases, RTOL, ATOL, check_worker)


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
