"""Issue 22: a learning rate (or callable hyperparameter) that is NaN or Inf at a step is caught like a NaN gradient.

`nonfinite="raise"` fails naming the optimizer, the step and the learning rate (not the gradient);
`"skip"` leaves variables, slots and `iterations` as they were and counts the step. Both the Keras 3
classes and `optimizers.legacy`, the fused kernel and the TF-ops path, eager and under `tf.function`.
The state after a later finite step is compared with the NumPy rules of `tests.optimizers.reference`.
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np
import pytest
import tensorflow as tf

import optimizers
from optimizers import fast_path, kernels, legacy
from tests.optimizers import reference as ref
from tests.optimizers.cases import BY_NAME, CASES, initial_slots
from tests.optimizers.helpers import make

ROWS, DIM = 6, 2
TOL = dict(rtol=1e-5, atol=1e-6)  # float32 steps against the float64 NumPy rule
_no_kernels = pytest.mark.skipif(not kernels.status()[0], reason=f"no kernels: {kernels.status()[1]}")
PATHS = [pytest.param(True, id="fused", marks=_no_kernels), pytest.param(False, id="tf-ops")]


def _init():
    return np.random.default_rng(3).normal(size=(ROWS, DIM)).astype(np.float32)


def _grad():
    values = np.array([[0.5, -1.0], [2.0, 0.25]], np.float32)
    return tf.IndexedSlices(tf.constant(values), tf.constant([1, 4], tf.int64), tf.constant([ROWS, DIM], tf.int64))


def _dense_grad():
    return np.zeros((ROWS, DIM), np.float32) + np.eye(ROWS, DIM, dtype=np.float32)


class _Switch:
    """A learning rate held in a variable: NaN (or Inf) first, a finite value later."""

    def __init__(self, bad):
        self.value = tf.Variable(bad, dtype=tf.float32)

    def __call__(self):
        return self.value.read_value()


class _NaNAtStepFive(keras.optimizers.schedules.LearningRateSchedule):
    def __call__(self, step):
        return tf.where(tf.equal(step, 5), tf.constant(np.nan, tf.float32), 0.1)


def _state(opt, var, slot_names):
    return var.numpy().copy(), {n: opt.get_slot(var, n).numpy().copy() for n in slot_names}


def _reference_step(case, init, lr):
    """One step of `case` from fresh slots at t = 0, on the sparse gradient (untouched rows: lazy or not)."""
    g = tf.convert_to_tensor(_grad()).numpy().astype(np.float64)
    slots = initial_slots(case, init.astype(np.float64))
    new, _ = case.step(init.astype(np.float64), slots, g, lr, 0, **case.ref_kwargs)
    if not case.exact:
        touched = np.zeros(ROWS, bool)
        touched[[1, 4]] = True
        new = np.where(touched[:, None], new, init)
    return new


@pytest.mark.parametrize("use_function", [True, False], ids=["tf.function", "eager"])
@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("name", ["sgd", "lazy_adam", "momentum"])
@pytest.mark.parametrize("nonfinite", ["raise", "skip"])
def test_nan_learning_rate_changes_nothing_then_training_goes_on(name, fused, use_function, nonfinite):
    case = BY_NAME[name]
    init = _init()
    lr = _Switch(np.nan)
    var = keras.Variable(init, name="table")
    opt = make(case, learning_rate=lr, nonfinite=nonfinite)
    opt.build([var])
    if fused:
        assert opt.apply_path(var) == fast_path.FUSED
    before = _state(opt, var, case.slots)
    step = (lambda g: opt.apply_gradients([(g, var)]))
    step = tf.function(step) if use_function else step
    with contextlib.nullcontext() if fused else fast_path.disabled():
        if nonfinite == "raise":
            with pytest.raises(tf.errors.InvalidArgumentError,
                               match=rf"{type(opt).__name__}: the learning rate is NaN or Inf, not the gradient"):
                step(_grad())
        else:
            step(_grad())
        after = _state(opt, var, case.slots)
        np.testing.assert_array_equal(after[0], before[0])
        for slot in case.slots:
            np.testing.assert_array_equal(after[1][slot], before[1][slot])
        assert int(opt.iterations.numpy()) == 0
        assert int(opt.skipped_steps.numpy()) == (1 if nonfinite == "skip" else 0)

        lr.value.assign(case.lr)
        step(_grad())
    np.testing.assert_allclose(var.numpy(), _reference_step(case, init, case.lr), **TOL)
    assert int(opt.iterations.numpy()) == 1


def test_raise_names_the_step():
    var = keras.Variable(_init(), name="table")
    opt = optimizers.get("lazy_adam", learning_rate=_NaNAtStepFive())
    opt.build([var])
    step = tf.function(lambda g: opt.apply_gradients([(g, var)]))
    opt.iterations.assign(5)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"LazyAdam: the learning rate is NaN or Inf, not the gradient.*\[at step\] \[5\] "
                             r"\[gradients finite:\] \[1\]"):
        step(_grad())
    assert int(opt.iterations.numpy()) == 5


@pytest.mark.parametrize("case", CASES, ids=str)
def test_every_optimizer_skips_an_inf_schedule(case):
    init = _init()
    var = keras.Variable(init, name="table")
    schedule = keras.optimizers.schedules.ExponentialDecay(np.inf, decay_steps=1, decay_rate=0.5)
    opt = make(case, learning_rate=schedule, nonfinite="skip")
    opt.build([var])
    before = _state(opt, var, case.slots)
    tf.function(lambda g: opt.apply_gradients([(g, var)]))(_grad())
    after = _state(opt, var, case.slots)
    np.testing.assert_array_equal(after[0], before[0])
    for slot in case.slots:
        np.testing.assert_array_equal(after[1][slot], before[1][slot])
    assert int(opt.iterations.numpy()) == 0 and int(opt.skipped_steps.numpy()) == 1


@pytest.mark.parametrize("name, hyper", [("momentum", "momentum"), ("lazy_adam", "beta_1"), ("adamw", "weight_decay")])
def test_a_callable_hyperparameter_that_is_nan_is_named(name, hyper):
    var = keras.Variable(_init(), name="table")
    opt = make(BY_NAME[name], **{hyper: lambda: float("nan")})
    opt.build([var])
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"per-step hyperparameter \(learning_rate, {hyper}\)"):
        tf.function(lambda g: opt.apply_gradients([(g, var)]))(_grad())
    np.testing.assert_array_equal(var.numpy(), _init())


def test_mirrored_skip_leaves_every_replica_unchanged(mirrored_strategy):
    init = _init()
    with mirrored_strategy.scope():
        var = keras.Variable(init, name="table")
        opt = optimizers.get("lazy_adam", learning_rate=lambda: float("nan"), nonfinite="skip")
        opt.build([var])

    @tf.function
    def step():
        mirrored_strategy.run(lambda: opt.apply_gradients([(_grad(), var)]))

    step()
    for replica in var.value.values:
        np.testing.assert_array_equal(replica.numpy(), init)
    assert int(opt.iterations.numpy()) == 0 and int(opt.skipped_steps.numpy()) == 1


@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "dense"])
@pytest.mark.parametrize("use_function", [True, False], ids=["tf.function", "eager"])
@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("nonfinite", ["raise", "skip"])
def test_legacy_nan_learning_rate_changes_nothing_then_training_goes_on(nonfinite, fused, use_function, sparse):
    init = _init()
    lr = _Switch(np.inf)
    var = tf.Variable(init)
    opt = legacy.Momentum(learning_rate=lr, momentum=0.8, nonfinite=nonfinite)
    grad = _grad() if sparse else tf.constant(_dense_grad())
    step = (lambda: opt.apply_gradients([(grad, var)]))
    step = tf.function(step) if use_function else step
    with contextlib.nullcontext() if fused else fast_path.disabled():
        if nonfinite == "raise":
            with pytest.raises(tf.errors.InvalidArgumentError, match=r"Momentum: the learning rate .*not the gradient"):
                step()
        else:
            step()
        np.testing.assert_array_equal(var.numpy(), init)
        np.testing.assert_array_equal(opt.get_slot(var, "momentum").numpy(), 0.0)
        assert int(opt.iterations.numpy()) == 0
        assert int(opt.skipped_steps.numpy()) == (1 if nonfinite == "skip" else 0)
        lr.value.assign(0.1)
        step()
    g = tf.convert_to_tensor(grad).numpy().astype(np.float64)
    expected, _ = ref.momentum_step(init.astype(np.float64), {"momentum": np.zeros_like(g)}, g, 0.1, 0, momentum=0.8)
    np.testing.assert_allclose(var.numpy(), expected, **TOL)
    assert int(opt.iterations.numpy()) == 1


@pytest.mark.parametrize("cls", [legacy.SGD, legacy.DecayingSGD])
def test_legacy_skips_a_nan_callable_decay_rate_or_learning_rate(cls):
    var = tf.Variable(_init())
    opt = cls(learning_rate=lambda: float("nan"), nonfinite="skip")
    tf.function(lambda: opt.apply_gradients([(_grad(), var)]))()
    np.testing.assert_array_equal(var.numpy(), _init())
    assert int(opt.iterations.numpy()) == 0 and int(opt.skipped_steps.numpy()) == 1


def test_legacy_nonfinite_is_validated_and_in_the_config():
    with pytest.raises(ValueError, match="nonfinite"):
        legacy.SGD(nonfinite="ignore")
    assert legacy.SGD.from_config(legacy.SGD(nonfinite="skip").get_config()).nonfinite == "skip"
