"""Every optimizer against its independent NumPy reference, dense and sparse."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import optimizers
from tests.optimizers import reference as ref
from tests.optimizers.cases import BY_NAME, CASES, initial_slots
from tests.optimizers.helpers import apply_steps, make, slot_values, sparse_grad

# float32 implementation vs float64 reference over a few steps.
RTOL, ATOL = 1e-5, 1e-6
ROWS, DIM = 6, 3


def run_reference(case, var, grads):
    slots = initial_slots(case, var)
    for t, g in enumerate(grads):
        var, slots = case.step(var, slots, g, case.lr, t, **case.ref_kwargs)
    return var, slots


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("steps", [1, 3])
def test_dense_steps_match_numpy(case, steps, rng):
    var0 = rng.normal(size=(ROWS, DIM))
    grads = [rng.normal(size=(ROWS, DIM)) for _ in range(steps)]
    opt = make(case)
    var = apply_steps(opt, var0, [tf.constant(g, tf.float32) for g in grads])
    want_var, want_slots = run_reference(case, var0, grads)
    np.testing.assert_allclose(var.numpy(), want_var, rtol=RTOL, atol=ATOL)
    for name, value in slot_values(opt, var, case).items():
        np.testing.assert_allclose(value, want_slots[name], rtol=RTOL, atol=ATOL)
    assert int(opt.iterations.numpy()) == steps


@pytest.mark.parametrize("case", CASES, ids=str)
def test_sparse_with_duplicate_indices_matches_numpy(case, rng):
    var0 = rng.normal(size=(ROWS, DIM))
    steps = [([1, 4, 1, 1], rng.normal(size=(4, DIM))), ([4, 0, 4], rng.normal(size=(3, DIM)))]
    opt = make(case)
    var = apply_steps(opt, var0, [sparse_grad(i, v, ROWS) for i, v in steps])
    want_var, want_slots = var0, initial_slots(case, var0)
    for t, (indices, values) in enumerate(steps):
        if case.exact:
            dense = ref.densify(np.array(indices), values, ROWS)
            want_var, want_slots = case.step(want_var, want_slots, dense, case.lr, t, **case.ref_kwargs)
        else:
            want_var, want_slots = ref.apply_sparse(
                case.step, want_var, want_slots, np.array(indices), values, case.lr, t, **case.ref_kwargs
            )
    np.testing.assert_allclose(var.numpy(), want_var, rtol=RTOL, atol=ATOL)
    for name, value in slot_values(opt, var, case).items():
        np.testing.assert_allclose(value, want_slots[name], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_sparse_equals_dense_when_exact_or_all_rows_touched(case, rng):
    var0 = rng.normal(size=(ROWS, DIM))
    indices = [[0, 1, 2, 3, 4, 5, 2], [5, 3, 3, 0, 1, 2, 4]] if not case.exact else [[1, 3, 1], [0, 0, 5]]
    values = [rng.normal(size=(len(i), DIM)) for i in indices]
    sparse_opt, dense_opt = make(case), make(case)
    sparse_var = apply_steps(sparse_opt, var0, [sparse_grad(i, v, ROWS) for i, v in zip(indices, values)])
    dense_grads = [tf.constant(ref.densify(np.array(i), v, ROWS), tf.float32) for i, v in zip(indices, values)]
    dense_var = apply_steps(dense_opt, var0, dense_grads)
    np.testing.assert_allclose(sparse_var.numpy(), dense_var.numpy(), rtol=RTOL, atol=ATOL)
    for name in case.slots:
        np.testing.assert_allclose(
            sparse_opt.get_slot(sparse_var, name).numpy(), dense_opt.get_slot(dense_var, name).numpy(),
            rtol=RTOL, atol=ATOL,
        )


@pytest.mark.parametrize("case", [c for c in CASES if not c.exact], ids=str)
def test_untouched_rows_and_slots_unchanged_for_lazy_rules(case, rng):
    var0 = rng.normal(size=(ROWS, DIM))
    opt = make(case)
    var = apply_steps(opt, var0, [sparse_grad([2, 4, 2], rng.normal(size=(3, DIM)), ROWS) for _ in range(3)])
    untouched = [0, 1, 3, 5]
    np.testing.assert_array_equal(var.numpy()[untouched], var0.astype(np.float32)[untouched])
    fresh = initial_slots(case, var0)
    for name, value in slot_values(opt, var, case).items():
        np.testing.assert_array_equal(value[untouched], fresh[name][untouched].astype(np.float32))


@pytest.mark.parametrize(
    "name, keras_cls, kwargs",
    [
        ("adam", keras.optimizers.Adam, {"learning_rate": 0.01, "beta_1": 0.8, "beta_2": 0.95, "epsilon": 1e-6}),
        ("lazy_adam", keras.optimizers.Adam, {"learning_rate": 0.01}),
        ("adamw", keras.optimizers.AdamW, {"learning_rate": 0.01, "weight_decay": 0.1}),
        ("adagrad", keras.optimizers.Adagrad, {"learning_rate": 0.1, "initial_accumulator_value": 0.2}),
        ("ftrl", keras.optimizers.Ftrl, {
            "learning_rate": 0.1, "initial_accumulator_value": 0.2, "l1_regularization_strength": 0.01,
            "l2_regularization_strength": 0.02, "l2_shrinkage_regularization_strength": 0.03, "beta": 0.1}),
    ],
)
def test_dense_matches_keras_builtin(name, keras_cls, kwargs, rng):
    var0 = rng.normal(size=(ROWS, DIM)).astype(np.float32)
    grads = [tf.constant(rng.normal(size=(ROWS, DIM)), tf.float32) for _ in range(5)]
    ours = apply_steps(optimizers.get(name, **kwargs), var0, grads)
    theirs = apply_steps(keras_cls(**kwargs), var0, grads)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-6, atol=1e-6)


CLIP_CASES = ["sgd", "lazy_adam", "adagrad", "momentum"]


@pytest.mark.parametrize("name", CLIP_CASES)
@pytest.mark.parametrize("clip", [{"clipnorm": 0.5}, {"clipvalue": 0.3}])
def test_clipping_on_sparse_gradients(name, clip, rng):
    case = BY_NAME[name]
    var0 = rng.normal(size=(ROWS, DIM))
    indices, values = np.array([3, 1, 3]), rng.normal(size=(3, DIM)) * 3
    var = apply_steps(make(case, **clip), var0, [sparse_grad(indices, values, ROWS)])
    rows = np.unique(indices)
    summed = ref.densify(indices, values, ROWS)[rows]
    if "clipnorm" in clip:
        summed = ref.clip_norm(summed, clip["clipnorm"])
    else:
        summed = np.clip(summed, -clip["clipvalue"], clip["clipvalue"])
    want = ref.apply_sparse(case.step, var0, initial_slots(case, var0), rows, summed, case.lr, 0, **case.ref_kwargs)[0]
    np.testing.assert_allclose(var.numpy(), want, rtol=RTOL, atol=ATOL)


def test_global_clipnorm_across_sparse_and_dense(rng):
    case = BY_NAME["sgd"]
    table0, dense0 = rng.normal(size=(ROWS, DIM)), rng.normal(size=(DIM,))
    indices, values, dense_g = np.array([0, 2, 0]), rng.normal(size=(3, DIM)) * 4, rng.normal(size=(DIM,)) * 4
    opt = make(case, global_clipnorm=1.0)
    table, bias = keras.Variable(table0.astype(np.float32)), keras.Variable(dense0.astype(np.float32))
    opt.apply_gradients([(sparse_grad(indices, values, ROWS), table), (tf.constant(dense_g, tf.float32), bias)])
    rows = np.unique(indices)
    summed = ref.densify(indices, values, ROWS)[rows]
    clipped_rows, clipped_dense = ref.clip_global_norm([summed, dense_g], 1.0)
    want_table = table0.copy()
    want_table[rows] -= case.lr * clipped_rows
    np.testing.assert_allclose(table.numpy(), want_table, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(bias.numpy(), dense0 - case.lr * clipped_dense, rtol=RTOL, atol=ATOL)


def test_weight_decay_touches_only_looked_up_rows(rng):
    case = BY_NAME["adamw"]
    var0 = rng.normal(size=(ROWS, DIM))
    var = apply_steps(make(case), var0, [sparse_grad([1, 1], np.zeros((2, DIM)), ROWS)])
    decayed = var0[1] * (1 - case.lr * case.kwargs["weight_decay"])
    np.testing.assert_allclose(var.numpy()[1], decayed, rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(np.delete(var.numpy(), 1, axis=0), np.delete(var0.astype(np.float32), 1, axis=0))
