"""Issue 19: every optimizer's fused-kernel step equals its TF-ops step, through the optimizer API.

The TF-ops path (`optimizers.fast_path.disabled()`) is the reference: it is the pure rule of
`optimizers.rules` on gathered rows, itself checked against NumPy in test_update_rules.py. Each test runs
the same steps both ways on fresh variables and compares tables and slots. Tolerances: float32 rtol 1e-5,
atol 1e-6 (FTRL's `linear` slot, a difference of terms near 50, atol 2e-5); float64 rtol 1e-12.
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import optimizers
from optimizers import fast_path, kernels, legacy
from tests.optimizers.cases import CASES, initial_slots
from tests.optimizers.helpers import make

pytestmark = pytest.mark.skipif(not kernels.status()[0], reason=f"no kernels: {kernels.status()[1]}")

FUSED_CASES = [c for c in CASES if c.name != "adam"]  # Adam's exact path sweeps the table in TF ops
ROWS = 40


def _tolerance(case, dtype=np.float32):
    if dtype == np.float64:
        return dict(rtol=1e-12, atol=1e-12)
    return dict(rtol=1e-5, atol=2e-5 if case.name == "ftrl" else 1e-6)


def _grads(rng, width, steps, dtype=np.float32, index_dtype=tf.int64, size=25):
    """Per step: an IndexedSlices with duplicates and the first and last rows."""
    grads = []
    for _ in range(steps):
        ids = np.concatenate([[0, ROWS - 1, 3, 3], rng.integers(0, ROWS, size - 4)])
        values = rng.normal(0, 1, (len(ids), width)).astype(dtype)
        grads.append(tf.IndexedSlices(tf.constant(values), tf.constant(ids, index_dtype),
                                      tf.constant([ROWS, width], tf.int64)))
    return grads


def _apply_steps(case, var, grads, fused, **overrides):
    """Applies `grads` one step each in a `tf.function`, on the fused or the TF-ops path; returns the variable,
    its slots, the optimizer and the op types of the traced step's functions."""
    opt = make(case, **overrides)
    opt.build([var])
    with contextlib.nullcontext() if fused else fast_path.disabled():
        step = tf.function(lambda g: opt.apply_gradients([(g, var)]))
        for g in grads:
            step(g)
        graph_ops = {op.op for f in step.get_concrete_function(grads[0]).graph.as_graph_def().library.function
                     for op in f.node_def}
    return var.numpy(), {name: opt.get_slot(var, name).numpy() for name in case.slots}, opt, graph_ops


def _run(case, grads, width, fused, dtype=np.float32, **overrides):
    init = np.random.default_rng(7).normal(0, 0.5, (ROWS, width)).astype(dtype)
    var, slots, opt, graph_ops = _apply_steps(case, keras.Variable(init, name="table", dtype=dtype), grads, fused,
                                              **overrides)
    assert ("EmbedoptSparseApply" in graph_ops) == fused, graph_ops
    return var, slots, opt


def _assert_paths_agree(case, width, dtype=np.float32, steps=3, **overrides):
    grads = _grads(np.random.default_rng(1), width, steps, dtype)
    fused_var, fused_slots, _ = _run(case, grads, width, True, dtype, **overrides)
    tf_var, tf_slots, _ = _run(case, grads, width, False, dtype, **overrides)
    np.testing.assert_allclose(fused_var, tf_var, **_tolerance(case, dtype))
    for name in case.slots:
        np.testing.assert_allclose(fused_slots[name], tf_slots[name], err_msg=name, **_tolerance(case, dtype))
    return fused_var


@pytest.mark.parametrize("width", [1, 3, 129])
@pytest.mark.parametrize("case", FUSED_CASES, ids=str)
def test_fused_step_equals_the_tf_step(case, width):
    table = _assert_paths_agree(case, width)
    assert np.isfinite(table).all()


@pytest.mark.parametrize("case", FUSED_CASES, ids=str)
def test_fused_step_equals_the_tf_step_in_float64(case):
    _assert_paths_agree(case, 4, dtype=np.float64)


@pytest.mark.parametrize("options", [{"clipnorm": 0.5}, {"clipvalue": 0.1}, {"global_clipnorm": 0.3},
                                     {"weight_decay": 0.05}], ids=lambda o: next(iter(o)))
@pytest.mark.parametrize("case", [c for c in FUSED_CASES if c.name in ("sgd", "adagrad", "lazy_adam", "ftrl")],
                         ids=str)
def test_clipping_and_weight_decay_on_the_fused_path(case, options):
    _assert_paths_agree(case, 5, **options)


def test_a_learning_rate_schedule_reaches_the_kernel():
    case = next(c for c in FUSED_CASES if c.name == "lazy_adam")
    schedule = keras.optimizers.schedules.ExponentialDecay(0.05, decay_steps=1, decay_rate=0.5)
    _assert_paths_agree(case, 3, steps=4, learning_rate=schedule)


@pytest.mark.parametrize("index_dtype", [tf.int32, tf.int64])
def test_int32_and_int64_ids_one_row_and_an_empty_gradient(index_dtype):
    case = next(c for c in FUSED_CASES if c.name == "adagrad")
    rng = np.random.default_rng(2)
    one = tf.IndexedSlices(tf.constant(rng.normal(size=(1, 3)), tf.float32), tf.constant([ROWS - 1], index_dtype),
                           tf.constant([ROWS, 3], tf.int64))
    empty = tf.IndexedSlices(tf.zeros([0, 3]), tf.zeros([0], index_dtype), tf.constant([ROWS, 3], tf.int64))
    fused, _, _ = _run(case, [one, empty], 3, True)
    reference, _, _ = _run(case, [one, empty], 3, False)
    np.testing.assert_allclose(fused, reference, rtol=1e-6)
    init = np.random.default_rng(7).normal(0, 0.5, (ROWS, 3)).astype(np.float32)
    np.testing.assert_array_equal(fused[:-1], init[:-1])  # untouched rows stay as they were


def test_out_of_range_ids_are_refused_and_change_nothing():
    var = keras.Variable(np.ones((ROWS, 2), np.float32), name="table")
    opt = optimizers.get("sgd", learning_rate=0.1)
    opt.build([var])
    bad = tf.IndexedSlices(tf.ones([2, 2]), tf.constant([1, ROWS], tf.int64), tf.constant([ROWS, 2], tf.int64))
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"{ROWS} is not in \[0, {ROWS}\)"):
        tf.function(lambda g: opt.apply_gradients([(g, var)]))(bad)
    np.testing.assert_array_equal(var.numpy(), np.ones((ROWS, 2)))


@pytest.mark.parametrize("nonfinite", ["raise", "skip"])
def test_a_nan_gradient_changes_nothing_on_the_fused_path(nonfinite):
    var = keras.Variable(np.ones((ROWS, 2), np.float32), name="table")
    opt = optimizers.get("lazy_adam", learning_rate=0.1, nonfinite=nonfinite)
    opt.build([var])
    nan = tf.IndexedSlices(tf.constant([[np.nan, 1.0]]), tf.constant([4], tf.int64), tf.constant([ROWS, 2], tf.int64))
    step = tf.function(lambda g: opt.apply_gradients([(g, var)]))
    if nonfinite == "raise":
        with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or Inf"):
            step(nan)
    else:
        step(nan)
        assert int(opt.skipped_steps.numpy()) == 1
    np.testing.assert_array_equal(var.numpy(), np.ones((ROWS, 2)))
    np.testing.assert_array_equal(opt.get_slot(var, "m").numpy(), 0.0)


@pytest.mark.parametrize("name", ["lazy_adam", "rowwise_adagrad", "nesterov"])
def test_two_replicas_on_the_fused_path_equal_one_replica_in_numpy(mirrored_strategy, name):
    """Each replica looks up half the batch; the summed, deduplicated gradient is applied by the kernel."""
    case = next(c for c in CASES if c.name == name)
    init = np.random.default_rng(3).normal(0, 0.5, (ROWS, 4)).astype(np.float32)
    ids = np.array([[1, 5, 5, 0], [5, 9, ROWS - 1, 1]])
    with mirrored_strategy.scope():
        layer = optimizers.SparseEmbedding(ROWS, 4, embeddings_initializer=keras.initializers.Constant(init))
        layer.build()
        opt = make(case)
        opt.build(layer.trainable_variables)

    @tf.function
    def step(batch):
        def replica(x):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(layer(x) * tf.range(1.0, 5.0))
            grads = tape.gradient(loss, layer.trainable_variables)
            opt.apply_gradients(zip(grads, layer.trainable_variables))

        mirrored_strategy.run(replica, args=(batch,))

    dataset = mirrored_strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(ids[ctx.replica_id_in_sync_group:ctx.replica_id_in_sync_group + 1]))
    step(dataset)
    assert opt.apply_path(layer.embeddings.value) == fast_path.FUSED
    # One replica on the global batch: the dense gradient is the count of each (id, column) weight.
    grad = np.zeros((ROWS, 4))
    for i in ids.ravel():
        grad[i] += np.arange(1.0, 5.0)
    expected, slots = case.step(init.astype(np.float64), initial_slots(case, init.astype(np.float64)), grad,
                                case.lr, 0, **case.ref_kwargs)
    touched = np.unique(ids)
    for copy in layer.embeddings.value.values:
        np.testing.assert_allclose(copy.numpy()[touched], expected[touched], rtol=1e-5, atol=1e-6)
        untouched = np.setdiff1d(np.arange(ROWS), touched)
        np.testing.assert_array_equal(copy.numpy()[untouched], init[untouched])


@pytest.mark.parametrize("name", ["SGD", "Momentum", "DecayingSGD"])
def test_legacy_optimizers_take_the_kernel_and_equal_the_tf_path(name):
    init = np.random.default_rng(4).normal(0, 0.5, (ROWS, 3)).astype(np.float32)
    ids = tf.constant([[2, 2, 7], [ROWS - 1, 0, 7]])

    def train(fused):
        model = tf_keras.Sequential([tf_keras.layers.Embedding(ROWS, 3, embeddings_initializer=
                                                               tf_keras.initializers.Constant(init))])
        opt = getattr(legacy, name)(learning_rate=0.1)
        with contextlib.nullcontext() if fused else fast_path.disabled():
            @tf.function
            def step(x):
                with tf.GradientTape() as tape:
                    loss = tf.reduce_sum(model(x) * tf.range(1.0, 4.0))
                grads = tape.gradient(loss, model.trainable_variables)
                opt.apply_gradients(zip(grads, model.trainable_variables))

            for _ in range(3):
                step(ids)
            graph = step.get_concrete_function(ids).graph.as_graph_def()
        ops = {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}
        assert ("EmbedoptSparseApply" in ops) == fused
        return model.get_weights()[0]

    np.testing.assert_allclose(train(True), train(False), rtol=1e-5, atol=1e-6)


def test_apply_path_names_the_kernel_or_the_reason():
    var = keras.Variable(np.ones((4, 2), np.float32))
    assert optimizers.get("lazy_adam").apply_path(var.value) == fast_path.FUSED
    assert optimizers.get("adam").apply_path(var.value).startswith("TF ops: Adam has no fused kernel")
    with fast_path.disabled():
        assert optimizers.get("sgd").apply_path(var.value).startswith("TF ops: disabled")
    complex_var = tf.Variable(np.ones((4, 2), np.complex64))
    assert "complex64" in optimizers.get("sgd").apply_path(complex_var)


def test_the_embedding_lookup_takes_the_kernel_and_its_gradient_needs_no_dedup():
    layer = optimizers.SparseEmbedding(ROWS, 3)
    layer.build()
    ids = tf.constant([[5, 1, 5], [1, 0, ROWS - 1]])
    graph = tf.function(lambda x: layer(x)).get_concrete_function(ids).graph
    assert "EmbedoptPooledLookup" in {op.type for op in graph.get_operations()}
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(ids))
    (grad,) = tape.gradient(loss, layer.trainable_variables)
    assert grad.indices.numpy().tolist() == [0, 1, 5, ROWS - 1]  # already unique and ascending
    np.testing.assert_array_equal(grad.values.numpy()[:, 0], [1.0, 2.0, 2.0, 1.0])


def _run_dense(case, shape, fused, steps=3):
    rng = np.random.default_rng(3)
    var = keras.Variable(rng.normal(0, 0.5, shape).astype(np.float32), name="dense")
    grads = [tf.constant(rng.normal(0, 1, shape).astype(np.float32)) for _ in range(steps)]
    values, slots, _, graph_ops = _apply_steps(case, var, grads, fused)
    return values, slots, graph_ops


@pytest.mark.parametrize("shape", [(6, 3), (4,), (2, 3, 2)], ids=["matrix", "bias", "rank3"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_dense_gradients_take_the_kernel_and_equal_the_tf_step(case, shape):
    # Every row touched once: the kernel's rule equals the TF rule on the whole tensor (Adam's too: its dense
    # update is the same rule; only its sparse path sweeps the table).
    fused_var, fused_slots, fused_ops = _run_dense(case, shape, fused=True)
    tf_var, tf_slots, tf_ops = _run_dense(case, shape, fused=False)
    assert "EmbedoptSparseApply" in fused_ops and "EmbedoptSparseApply" not in tf_ops
    np.testing.assert_allclose(fused_var, tf_var, **_tolerance(case))
    for name in case.slots:
        np.testing.assert_allclose(fused_slots[name], tf_slots[name], err_msg=name, **_tolerance(case))


def test_a_scalar_variable_keeps_the_tf_ops():
    case = next(c for c in CASES if c.name == "lazy_adam")
    fused_var, fused_slots, fused_ops = _run_dense(case, (), fused=True)
    tf_var, tf_slots, _ = _run_dense(case, (), fused=False)
    assert "EmbedoptSparseApply" not in fused_ops
    np.testing.assert_allclose(fused_var, tf_var, rtol=1e-6)
