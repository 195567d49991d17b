"""Construction, config, validation, schedules, step counter, NaN handling."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import optimizers
from tests.optimizers import reference as ref
from tests.optimizers.cases import BY_NAME, CASES, initial_slots
from tests.optimizers.helpers import apply_steps, make, sparse_grad


@pytest.mark.parametrize("case", CASES, ids=str)
def test_config_roundtrip(case):
    opt = make(case, clipnorm=2.0, nonfinite="skip")
    config = opt.get_config()
    clone = type(opt).from_config(config)
    assert clone.get_config() == config
    via_keras = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(via_keras) is type(opt)
    assert via_keras.get_config() == config
    for key, value in case.kwargs.items():
        assert config[key] == pytest.approx(value)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_get_by_name_and_config(case):
    opt = optimizers.get(case.get_name, learning_rate=0.5)
    assert float(opt.learning_rate.numpy()) == 0.5
    again = optimizers.get(keras.optimizers.serialize(opt))
    assert type(again) is type(opt) and again.get_config() == opt.get_config()


def test_get_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown optimizer 'adamm'.*lazy_adam"):
        optimizers.get("adamm")


@pytest.mark.parametrize(
    "name, kwargs, argument",
    [
        ("sgd", {"learning_rate": -0.1}, "learning_rate"),
        ("momentum", {"momentum": 1.0}, "momentum"),
        ("momentum", {"momentum": -0.1}, "momentum"),
        ("decaying_sgd", {"decay_rate": 0.0}, "decay_rate"),
        ("decaying_sgd", {"decay_rate": 1.5}, "decay_rate"),
        ("adam", {"beta_1": 1.0}, "beta_1"),
        ("lazy_adam", {"beta_2": -0.5}, "beta_2"),
        ("adam", {"epsilon": -1e-7}, "epsilon"),
        ("adamw", {"weight_decay": -0.1}, "weight_decay"),
        ("adagrad", {"initial_accumulator_value": -1.0}, "initial_accumulator_value"),
        ("ftrl", {"learning_rate_power": 0.5}, "learning_rate_power"),
        ("ftrl", {"l1_regularization_strength": -1.0}, "l1_regularization_strength"),
        ("ftrl", {"learning_rate": 0.0}, "learning_rate"),
        ("sgd", {"clipnorm": -1.0}, "clipnorm"),
        ("sgd", {"nonfinite": "ignore"}, "nonfinite"),
        ("sgd", {"gradient_accumulation_steps": 4}, "gradient_accumulation_steps"),
        ("momentum", {"momentum": "high"}, "momentum"),
    ],
)
def test_invalid_hyperparameters_name_the_argument(name, kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        optimizers.get(name, **kwargs)


def test_learning_rate_schedule_is_followed():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
    opt = optimizers.SGD(learning_rate=schedule)
    grads = [tf.ones((2, 2)) for _ in range(3)]
    var = apply_steps(opt, np.zeros((2, 2)), grads)
    np.testing.assert_allclose(var.numpy(), -(0.1 + 0.05 + 0.025) * np.ones((2, 2)), rtol=1e-6)
    clone = optimizers.SGD.from_config(opt.get_config())
    assert isinstance(clone._learning_rate, keras.optimizers.schedules.ExponentialDecay)


def test_callable_hyperparameter_is_read_each_step():
    momentum = tf.Variable(0.5)
    opt = optimizers.Momentum(learning_rate=1.0, momentum=lambda: momentum)
    var = keras.Variable(np.zeros((1,), np.float32))
    opt.apply_gradients([(tf.ones((1,)), var)])  # m = 1, var = -1
    momentum.assign(0.0)
    opt.apply_gradients([(tf.ones((1,)), var)])  # m = 0*1 + 1 = 1, var = -2
    np.testing.assert_allclose(var.numpy(), [-2.0])


def test_step_counter_counts_steps_not_variables():
    opt = optimizers.DecayingSGD(learning_rate=1.0, decay_rate=0.5)
    variables = [keras.Variable(np.zeros((2,), np.float32), name=f"v{i}") for i in range(3)]
    opt.build(variables)

    @tf.function
    def step():
        opt.apply_gradients([(tf.ones((2,)), v) for v in variables])

    for _ in range(3):
        step()
    assert int(opt.iterations.numpy()) == 3
    # decay_rate**0 + **1 + **2 = 1.75 on every variable.
    for v in variables:
        np.testing.assert_allclose(v.numpy(), [-1.75, -1.75], rtol=1e-6)


def _nan_step(opt, table, bias):
    """A traced step whose table gradient holds a NaN."""

    @tf.function
    def step():
        g_table = sparse_grad([0, 2], [[1.0, np.nan], [1.0, 1.0]], 4)
        opt.apply_gradients([(g_table, table), (tf.ones((2,)), bias)])

    return step


@pytest.mark.parametrize("case", CASES, ids=str)
def test_nan_gradient_raises_and_changes_nothing(case):
    opt = make(case)
    table = keras.Variable(np.ones((4, 2), np.float32), name="table")
    bias = keras.Variable(np.ones((2,), np.float32), name="bias")
    opt.build([table, bias])
    before = [v.numpy().copy() for v in opt.variables]
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"NaN or Inf in the gradients.*table.*\[0 1\]"):
        _nan_step(opt, table, bias)()
    np.testing.assert_array_equal(table.numpy(), np.ones((4, 2)))
    np.testing.assert_array_equal(bias.numpy(), np.ones((2,)))
    for got, want in zip([v.numpy() for v in opt.variables], before):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_nan_gradient_skipped_when_asked(case):
    opt = make(case, nonfinite="skip")
    table = keras.Variable(np.ones((4, 2), np.float32), name="table")
    bias = keras.Variable(np.ones((2,), np.float32), name="bias")
    opt.build([table, bias])
    before = [v.numpy().copy() for v in opt.variables if "skipped" not in v.path]
    _nan_step(opt, table, bias)()
    assert int(opt.skipped_steps.numpy()) == 1
    assert int(opt.iterations.numpy()) == 0
    np.testing.assert_array_equal(table.numpy(), np.ones((4, 2)))
    for got, want in zip([v.numpy() for v in opt.variables if "skipped" not in v.path], before):
        np.testing.assert_array_equal(got, want)
    # A finite step afterwards is the first step: same as a fresh optimizer's.
    opt.apply_gradients([(tf.ones((2,)), bias)])
    fresh_bias = keras.Variable(np.ones((2,), np.float32))
    make(case).apply_gradients([(tf.ones((2,)), fresh_bias)])
    np.testing.assert_allclose(bias.numpy(), fresh_bias.numpy(), rtol=1e-6)


def test_inf_in_dense_gradient_is_caught():
    opt = optimizers.SGD()
    var = keras.Variable(np.ones((2,), np.float32), name="weights")
    with pytest.raises(tf.errors.InvalidArgumentError, match="weights"):
        opt.apply_gradients([(tf.constant([1.0, np.inf]), var)])
    np.testing.assert_array_equal(var.numpy(), [1.0, 1.0])


def test_rowwise_adagrad_slot_is_one_float_per_row():
    opt = optimizers.RowWiseAdagrad()
    table = keras.Variable(np.ones((1000, 32), np.float32))
    opt.build([table])
    assert tuple(opt.get_slot(table, "accumulator").shape) == (1000,)
    plain = optimizers.Adagrad()
    plain.build([table])
    assert tuple(plain.get_slot(table, "accumulator").shape) == (1000, 32)


def test_three_dimensional_variable_rowwise_matches_reference():
    case = BY_NAME["rowwise_adagrad"]
    rng = np.random.default_rng(7)
    var0, g = rng.normal(size=(3, 2, 2)), rng.normal(size=(3, 2, 2))
    var = apply_steps(make(case), var0, [tf.constant(g, tf.float32)])
    want, _ = case.step(var0, initial_slots(case, var0), g, case.lr, 0, **case.ref_kwargs)
    np.testing.assert_allclose(var.numpy(), want, rtol=1e-5, atol=1e-6)
    assert ref.rowwise_adagrad_step is case.step


def _jit_step(opt, table, grad_values):
    @tf.function(jit_compile=True)
    def step():
        opt.apply_gradients([(sparse_grad([0, 2, 0], grad_values, 4), table)])

    return step


@pytest.mark.parametrize("case", CASES, ids=str)
def test_jit_compiled_step_matches_plain_step(case):
    values = np.arange(6, dtype=np.float32).reshape(3, 2) / 10
    results = []
    for jit in (True, False):
        opt = make(case)
        table = keras.Variable(np.ones((4, 2), np.float32))
        step = _jit_step(opt, table, values) if jit else (lambda: opt.apply_gradients(
            [(sparse_grad([0, 2, 0], values, 4), table)]))
        step()
        step()
        results.append(table.numpy())
    np.testing.assert_allclose(results[0], results[1], rtol=1e-6, atol=1e-7)


def test_nan_under_jit_is_skipped_and_counted():
    # XLA drops assertions, so "raise" cannot raise in compiled code: the step
    # must still change nothing, and say so through `skipped_steps`.
    opt = optimizers.LazyAdam()
    table = keras.Variable(np.ones((4, 2), np.float32))
    opt.build([table])
    _jit_step(opt, table, [[np.nan, 1.0], [1.0, 1.0], [1.0, 1.0]])()
    np.testing.assert_array_equal(table.numpy(), np.ones((4, 2)))
    assert int(opt.iterations.numpy()) == 0
    assert int(opt.skipped_steps.numpy()) == 1
