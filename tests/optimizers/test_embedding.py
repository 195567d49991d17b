"""SparseEmbedding: lookup values, IndexedSlices gradient, id checks, config."""

from __future__ import annotations

import contextlib

import keras
import numpy as np
import pytest
import tensorflow as tf

import optimizers
from optimizers import fast_path


def test_lookup_returns_the_rows(tmp_path):
    layer = optimizers.SparseEmbedding(10, 4)
    ids = np.array([[1, 9], [0, 1]])
    out = layer(ids)
    table = layer.embeddings.numpy()
    np.testing.assert_array_equal(out.numpy(), table[ids])
    assert out.shape == (2, 2, 4)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "tf_ops"])
def test_gradient_is_indexed_slices_of_looked_up_rows(fused):
    layer = optimizers.SparseEmbedding(1000, 8)
    layer.build()
    ids = tf.constant([[3, 7, 3]])
    with contextlib.nullcontext() if fused else fast_path.disabled():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(ids))
        (grad,) = tape.gradient(loss, layer.trainable_variables)
    assert isinstance(grad, tf.IndexedSlices)
    expected = np.zeros((1000, 8))
    expected[[3, 7]] = [[2.0], [1.0]]  # row 3 looked up twice
    np.testing.assert_array_equal(tf.convert_to_tensor(grad).numpy(), expected)
    # The fused kernel's gradient comes out deduplicated, ids ascending; tf.gather's has one row per lookup.
    assert grad.indices.numpy().tolist() == ([3, 7] if fused else [3, 7, 3])


@pytest.mark.parametrize("bad_id", [-1, 10, 12345])
def test_out_of_range_ids_raise_naming_the_range(bad_id):
    layer = optimizers.SparseEmbedding(10, 2, name="user_table")
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"user_table.*\[0, 10\)"):
        layer(tf.constant([1, bad_id]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[0, 10\)"):
        tf.function(lambda x: layer(x))(tf.constant([bad_id]))


@pytest.mark.parametrize("kwargs", [{"input_dim": 0, "output_dim": 2}, {"input_dim": 5, "output_dim": 2.5}])
def test_invalid_sizes_raise(kwargs):
    with pytest.raises(ValueError, match="must be a positive integer"):
        optimizers.SparseEmbedding(**kwargs)


def test_float_ids_are_refused():
    with pytest.raises(TypeError, match="ids must be integers"):
        optimizers.SparseEmbedding(5, 2)(tf.constant([1.0]))


def test_config_roundtrip():
    layer = optimizers.SparseEmbedding(7, 3, embeddings_initializer="zeros", validate_ids=False, name="t")
    clone = optimizers.SparseEmbedding.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "tf_ops"])
def test_mixed_precision_casts_rows_not_table(fused):
    layer = optimizers.SparseEmbedding(5000, 2, dtype="mixed_float16")
    with contextlib.nullcontext() if fused else fast_path.disabled():
        out = layer(tf.constant([1, 2]))
        graph = tf.function(layer).get_concrete_function(tf.TensorSpec([2], tf.int32)).graph
    assert out.dtype == tf.float16
    assert layer.embeddings.dtype == "float32"
    np.testing.assert_allclose(out.numpy(), layer.embeddings.numpy()[[1, 2]].astype(np.float16))
    # No op of the lookup reads or casts the whole table (Keras's autocast would cast all 5000 rows).
    for op in graph.get_operations():
        for tensor in op.outputs:
            assert tensor.shape.rank is None or 5000 not in tensor.shape.as_list(), (op.type, tensor.shape)


def test_model_trains_with_fit():
    ids = np.random.default_rng(0).integers(0, 50, size=(256, 3))
    labels = (ids[:, 0] % 2).astype("float32")
    model = keras.Sequential([
        keras.Input((3,), dtype="int64"),
        optimizers.SparseEmbedding(50, 4),
        keras.layers.Flatten(),
        keras.layers.Dense(1, activation="sigmoid"),
    ])
    model.compile(optimizer=optimizers.LazyAdam(0.05), loss="binary_crossentropy")
    history = model.fit(ids, labels, epochs=5, batch_size=32, verbose=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
