"""DCN-v2 cross layers (`CrossNetwork`) and the `dcnv2` interaction: NumPy references, config, checkpoints."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from components.trainer.dcn import CrossNetwork
from components.trainer.fn_args import TrainerConfig
from components.trainer.loop import TrainState, build_optimizers
from components.trainer.model import DLRM
from tests.components.trainer import dlrm_reference as ref

WIDTH = 6


def _randomized(layer: CrossNetwork, seed=0) -> CrossNetwork:
    """Random kernels and non-zero biases, so that every term of the rule shows."""
    rng = np.random.default_rng(seed)
    for v in layer.weights:
        v.assign(rng.normal(0.0, 0.4, v.shape).astype(np.float32))
    return layer


def _numpy_layers(layer: CrossNetwork):
    return [([m.numpy().astype(np.float64) for m in kernel], bias.numpy().astype(np.float64))
            for kernel, bias in zip(layer.kernels, layer.biases)]


@pytest.mark.parametrize("num_layers,rank", [(1, 0), (3, 0), (2, 2), (3, 5)])
def test_cross_network_matches_numpy(num_layers, rank):
    layer = CrossNetwork(num_layers, rank)
    layer.build((None, WIDTH))
    _randomized(layer)
    x0 = np.random.default_rng(1).normal(size=(4, WIDTH)).astype(np.float32)
    want = ref.cross_network(x0.astype(np.float64), _numpy_layers(layer))
    np.testing.assert_allclose(layer(tf.constant(x0)).numpy(), want, rtol=1e-5, atol=1e-6)


def test_one_full_rank_layer_by_hand():
    """x1 = x0 * (W x0 + b) + x0 with W = [[1, 2], [0, 1]] (row convention x @ W) and b = (0.5, -1)."""
    layer = CrossNetwork(1, 0)
    layer.build((None, 2))
    layer.kernels[0][0].assign([[1.0, 2.0], [0.0, 1.0]])
    layer.biases[0].assign([0.5, -1.0])
    # x0 = (1, 3): x0 @ W = (1, 5); + b = (1.5, 4); x0 * that = (1.5, 12); + x0 = (2.5, 15).
    np.testing.assert_allclose(layer(tf.constant([[1.0, 3.0]])).numpy(), [[2.5, 15.0]])


@pytest.mark.parametrize("rank,shapes", [(0, [(WIDTH, WIDTH), (WIDTH,)]), (2, [(WIDTH, 2), (2, WIDTH), (WIDTH,)])])
def test_low_rank_stores_two_thin_matrices_per_layer(rank, shapes):
    layer = CrossNetwork(2, rank)
    layer.build((None, WIDTH))
    assert [tuple(v.shape) for v in layer.weights] == shapes * 2


def test_layers_start_from_different_kernels_and_zero_biases():
    layer = CrossNetwork(2, 0, seed=3)
    layer.build((None, WIDTH))
    assert not np.allclose(layer.kernels[0][0].numpy(), layer.kernels[1][0].numpy())
    assert all(not b.numpy().any() for b in layer.biases)


def test_config_roundtrip():
    layer = CrossNetwork(2, 3, seed=4, name="cross")
    again = keras.layers.deserialize(keras.layers.serialize(layer))
    assert (type(again), again.num_layers, again.rank, again.seed, again.name) == (CrossNetwork, 2, 3, 4, "cross")
    x = tf.ones([2, WIDTH])
    layer(x), again(x)
    again.set_weights(_randomized(layer).get_weights())
    np.testing.assert_array_equal(again(x).numpy(), layer(x).numpy())


@pytest.mark.parametrize("kwargs,message", [({"num_layers": 0}, "num_layers"), ({"rank": -1}, "rank"),
                                            ({"num_layers": 2.0}, "num_layers")])
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CrossNetwork(**kwargs)


KEYS, SIZES = ("cat_0", "cat_1"), (4, 6)


def _dlrm(**kwargs) -> DLRM:
    model = DLRM(SIZES, KEYS, "dense", embedding_dim=3, table_layout="per_feature", interaction="dcnv2",
                 bottom_mlp=(4,), top_mlp=(5,), seed=2, **kwargs)
    model.build_variables(2)
    return model


def _inputs():
    return {"dense": tf.constant([[0.3, -0.2], [1.0, 0.5]]), "cat_0": tf.constant([1, 3], tf.int64),
            "cat_1": tf.constant([5, 0], tf.int64)}


@pytest.mark.parametrize("rank", [0, 4])
def test_dcnv2_dlrm_matches_numpy(rank):
    model = _dlrm(cross_layers=2, cross_rank=rank)
    _randomized(model.cross)
    rng = np.random.default_rng(5)
    for table in model.tables:
        table.embeddings.assign(rng.normal(0.0, 0.5, table.embeddings.shape).astype(np.float32))
    w = dict(tables=[t.embeddings.numpy().astype(np.float64) for t in model.tables], offsets=[0, 0], table_of=[0, 1],
             bottom=[(l.kernel.numpy(), l.bias.numpy()) for l in model.bottom],
             top=[(l.kernel.numpy(), l.bias.numpy()) for l in model.top],
             head=(model.head.kernel.numpy(), model.head.bias.numpy()), cross=_numpy_layers(model.cross))
    bags = [[[1], [3]], [[5], [0]]]
    want, _ = ref.forward(w, bags, _inputs()["dense"].numpy(), 3, "sum", "dcnv2")
    np.testing.assert_allclose(model(_inputs()).numpy(), want, rtol=1e-5, atol=1e-6)
    # The cross network sits between the concatenation (3 vectors of 3) and the top MLP.
    assert model.cross.kernels[0][0].shape[0] == 9 and model.top[0].kernel.shape[0] == 9


def _train_state(model) -> TrainState:
    embedding_optimizer, dense_optimizer = build_optimizers(model, TrainerConfig(), mixed_precision=False)
    return TrainState(model, embedding_optimizer, dense_optimizer, tf.Variable(0, dtype=tf.int64))


def test_dcnv2_checkpoint_restores_into_a_fresh_model(tmp_path):
    trained = _dlrm(cross_layers=2, cross_rank=2)
    _randomized(trained.cross)
    path = _train_state(trained).checkpoint().write(str(tmp_path / "ckpt"))
    fresh = _dlrm(cross_layers=2, cross_rank=2)
    _train_state(fresh).checkpoint().read(path).assert_consumed()
    for a, b in zip(trained.cross.weights, fresh.cross.weights):
        np.testing.assert_array_equal(b.numpy(), a.numpy())
    np.testing.assert_array_equal(fresh(_inputs()).numpy(), trained(_inputs()).numpy())


def test_dcnv2_under_mixed_precision_stays_close_to_float32():
    want = _dlrm(cross_layers=2, cross_rank=2)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        mixed = _dlrm(cross_layers=2, cross_rank=2)
        assert mixed.cross.compute_dtype == "float16" and mixed.cross.kernels[0][0].dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")
    mixed.set_weights(want.get_weights())
    logits = mixed(_inputs())
    assert logits.dtype == tf.float32
    # float16 carries ~3 significant digits through a few layers.
    np.testing.assert_allclose(logits.numpy(), want(_inputs()).numpy(), rtol=1e-2, atol=1e-2)
