"""Multi-hot (bag) features in the DLRM: pooled lookups against an independent NumPy DLRM, both table layouts."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import tensorflow as tf

from components.trainer.fn_args import TrainerConfig
from components.trainer.loop import TrainState, build_optimizers
from components.trainer.model import DLRM
from optimizers import fast_path
from tests.components.trainer import dlrm_reference as ref

KEYS = ("cat_0", "cat_1", "cat_2")
SIZES = (5, 7, 4)
BAG_KEYS = ("cat_1", "cat_2")
DIM = 3
# Example 1 has an empty cat_1 bag, example 0 a duplicate inside its cat_1 bag, example 2 one in cat_2.
BAGS = {"cat_0": [[1], [4], [0]],
        "cat_1": [[2, 2, 6], [], [0, 5]],
        "cat_2": [[3], [1, 2], [3, 3, 3, 0]]}
# Each feature as one-hot ids (a bag's first id, 0 for an empty bag).
ONE_HOT = {key: [bag[0] if bag else 0 for bag in bags] for key, bags in BAGS.items()}
DENSE = np.array([[0.5, -1.0], [1.5, 0.25], [-0.75, 2.0]], np.float32)
# float32 model against a float64 reference, a few layers deep.
RTOL, ATOL = 1e-5, 1e-6


def features(bag_keys=BAG_KEYS):
    out = {"dense": tf.constant(DENSE)}
    for key in KEYS:
        if key in bag_keys:
            out[key] = tf.ragged.constant(BAGS[key], dtype=tf.int64)
        else:
            out[key] = tf.constant(ONE_HOT[key], tf.int64)
    return out


def make_model(layout="shared", combiner="sum", interaction="concat", sharding="mirrored", bag_keys=BAG_KEYS,
               wide=True, **kwargs) -> DLRM:
    model = DLRM(SIZES, KEYS, "dense", embedding_dim=DIM, table_layout=layout, interaction=interaction,
                 bottom_mlp=(4,), top_mlp=(5,), wide=wide, seed=1, table_sharding=sharding, multi_hot_keys=bag_keys,
                 bag_combiner=combiner, **kwargs)
    model.build_variables(DENSE.shape[1])
    # Non-zero biases and larger rows than the default 1e-3 init, so every term shows in the comparison.
    rng = np.random.default_rng(0)
    for v in model.trainable_variables:
        v.assign(rng.normal(0.0, 0.5, v.shape).astype(np.float32))
    return model


def weights(model: DLRM) -> dict:
    layout_shared = model.table_layout == "shared"
    return dict(
        tables=[t.embeddings.numpy().astype(np.float64) for t in model.tables],
        offsets=list(np.cumsum([0, *SIZES[:-1]])) if layout_shared else [0] * len(KEYS),
        table_of=[0] * len(KEYS) if layout_shared else list(range(len(KEYS))),
        bottom=[(l.kernel.numpy(), l.bias.numpy()) for l in model.bottom],
        top=[(l.kernel.numpy(), l.bias.numpy()) for l in model.top],
        head=(model.head.kernel.numpy(), model.head.bias.numpy()),
        cross=([([m.numpy() for m in k], b.numpy()) for k, b in zip(model.cross.kernels, model.cross.biases)]
               if model.interaction == "dcnv2" else None),
    )


def _train_state(model) -> TrainState:
    embedding_optimizer, dense_optimizer = build_optimizers(model, TrainerConfig(), mixed_precision=False)
    return TrainState(model, embedding_optimizer, dense_optimizer, tf.Variable(0, dtype=tf.int64))


def reference_bags():
    return [BAGS[key] for key in KEYS]


def densify(grad, rows):
    assert isinstance(grad, tf.IndexedSlices), type(grad)
    out = np.zeros((rows, grad.values.shape[1]), np.float64)
    np.add.at(out, grad.indices.numpy(), grad.values.numpy())
    return out


PATHS = ["kernel", "tf_ops"]


def _path(name):
    """The pooled lookup on embedopt's fused CPU kernel, or on TensorFlow's ops."""
    return fast_path.disabled() if name == "tf_ops" else contextlib.nullcontext()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("layout", ["shared", "per_feature"])
@pytest.mark.parametrize("combiner", ["sum", "mean", "sqrtn"])
def test_forward_and_dense_equivalent_gradient_match_numpy(layout, combiner, path):
    model = make_model(layout, combiner)
    upstream = np.array([0.7, -1.3, 0.4])
    with _path(path), tf.GradientTape() as tape:
        logits = model(features())
        loss = tf.reduce_sum(logits * upstream)
    grads = tape.gradient(loss, model.embedding_variables())
    w = weights(model)
    want_logits, _ = ref.forward(w, reference_bags(), DENSE, DIM, combiner, "concat")
    np.testing.assert_allclose(logits.numpy(), want_logits, rtol=RTOL, atol=ATOL)
    want = ref.table_gradients(w, reference_bags(), DENSE, DIM, combiner, upstream)
    for got, expected, table in zip(grads, want, model.tables):
        np.testing.assert_allclose(densify(got, table.input_dim), expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("interaction", ["dot", "dcnv2"])
def test_bags_enter_every_interaction_as_a_pooled_vector(interaction):
    model = make_model("shared", "mean", interaction, cross_layers=2, cross_rank=2)
    want, _ = ref.forward(weights(model), reference_bags(), DENSE, DIM, "mean", interaction)
    np.testing.assert_allclose(model(features()).numpy(), want, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("layout", ["shared", "per_feature"])
def test_row_sharded_tables_on_one_replica_equal_mirrored_ones(layout):
    mirrored, row = make_model(layout, "sqrtn"), make_model(layout, "sqrtn", sharding="row")
    for a, b in zip(mirrored.trainable_variables, row.trainable_variables):
        b.assign(a)
    with tf.GradientTape(persistent=True) as tape:
        outputs = [m(features()) for m in (mirrored, row)]
    np.testing.assert_allclose(outputs[1].numpy(), outputs[0].numpy(), rtol=1e-6, atol=1e-7)
    for a, b, table in zip(tape.gradient(outputs[0], mirrored.embedding_variables()),
                           tape.gradient(outputs[1], row.embedding_variables()), mirrored.tables):
        np.testing.assert_allclose(densify(b, table.input_dim), densify(a, table.input_dim), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("layout", ["shared", "per_feature"])
def test_one_hot_ids_as_bags_of_one_give_the_one_hot_model(layout, tmp_path):
    one_hot = make_model(layout, bag_keys=())
    bags = make_model(layout, "mean", bag_keys=KEYS)
    for v in bags.trainable_variables:
        v.assign(tf.zeros_like(v))
    # Same variables: the trainer's checkpoint of a one-hot model restores into the bag model, every value used.
    path = _train_state(one_hot).checkpoint().write(str(tmp_path / "one_hot"))
    _train_state(bags).checkpoint().read(path).assert_consumed()
    for a, b in zip(one_hot.weights, bags.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    as_bags = {"dense": tf.constant(DENSE),
               **{k: tf.ragged.constant([[i] for i in ids], dtype=tf.int64) for k, ids in ONE_HOT.items()}}
    np.testing.assert_allclose(bags(as_bags).numpy(), one_hot(features(bag_keys=())).numpy(), rtol=1e-6, atol=1e-7)


def test_one_hot_model_keeps_plain_gathers():
    model = make_model("shared", bag_keys=())
    assert model.tables[0].combiner is None
    want, _ = ref.forward(weights(model), [[[i] for i in ONE_HOT[k]] for k in KEYS], DENSE, DIM, "sum", "concat")
    np.testing.assert_allclose(model(features(bag_keys=())).numpy(), want, rtol=RTOL, atol=ATOL)


def test_a_bag_matrix_is_accepted_as_uniform_bags():
    model = make_model("per_feature", "sum", bag_keys=("cat_2",))
    matrix = dict(features(bag_keys=()), cat_2=tf.constant([[3, 1], [1, 2], [0, 0]], tf.int64))
    ragged = dict(matrix, cat_2=tf.ragged.constant([[3, 1], [1, 2], [0, 0]], dtype=tf.int64))
    np.testing.assert_allclose(model(matrix).numpy(), model(ragged).numpy(), rtol=1e-6)


def test_shared_layout_checks_each_bag_feature_against_its_own_size():
    model = make_model("shared")
    bad = dict(features(), cat_1=tf.ragged.constant([[1], [7], []], dtype=tf.int64))  # cat_1 has 7 rows
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"feature cat_1: ids must be in \[0, 7\)"):
        model(bad)


def test_a_multi_hot_key_that_is_no_feature_is_refused():
    with pytest.raises(ValueError, match="cat_9"):
        DLRM(SIZES, KEYS, "dense", multi_hot_keys=("cat_9",))


def test_unknown_bag_combiner_is_refused():
    with pytest.raises(ValueError, match="bag_combiner.*'max'"):
        DLRM(SIZES, KEYS, "dense", multi_hot_keys=("cat_1",), bag_combiner="max")


def test_saved_model_serves_ragged_bags_with_tensorflow_ops(tmp_path):
    """The export traces the model with the kernels off, here with ragged inputs in the signature."""
    model = make_model("shared", "sum", "dcnv2", cross_layers=1, cross_rank=0)
    spec = {"dense": tf.TensorSpec([None, DENSE.shape[1]], tf.float32),
            "cat_0": tf.TensorSpec([None], tf.int64),
            **{k: tf.RaggedTensorSpec([None, None], tf.int64, ragged_rank=1, row_splits_dtype=tf.int64)
               for k in BAG_KEYS}}
    module = tf.Module()
    module.model = model
    module.serve = tf.function(lambda f: {"logits": module.model(f, training=False)}, input_signature=[spec])
    with fast_path.disabled():
        tf.saved_model.save(module, str(tmp_path))
    graph = (tmp_path / "saved_model.pb").read_bytes()
    assert b"Embedopt" not in graph
    loaded = tf.saved_model.load(str(tmp_path))
    np.testing.assert_allclose(loaded.serve(features())["logits"].numpy(), model(features()).numpy(),
                               rtol=1e-6, atol=1e-7)
