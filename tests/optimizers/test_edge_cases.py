"""Settings that would divide by zero or carry NaN/Inf, and complex variables.

Numbers are compared with the NumPy references in `reference.py` (float64
reference, float32 or complex64 variables: rtol=1e-5, atol=1e-6, a few ulps
after three steps of values of order 1) and, where Keras has the same rule,
with `keras.optimizers` on the same variable.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import optimizers
from tests.optimizers import reference as ref

TOL = dict(rtol=1e-5, atol=1e-6)
INF, NAN = float("inf"), float("nan")


@pytest.mark.parametrize(
    "name, kwargs, argument",
    [
        ("sgd", {"learning_rate": INF}, "learning_rate"),
        ("adam", {"learning_rate": NAN}, "learning_rate"),
        ("ftrl", {"learning_rate": INF}, "learning_rate"),
        ("momentum", {"momentum": NAN}, "momentum"),
        ("decaying_sgd", {"decay_rate": NAN}, "decay_rate"),
        ("adam", {"beta_1": NAN}, "beta_1"),
        ("adam", {"epsilon": INF}, "epsilon"),
        ("adamw", {"weight_decay": INF}, "weight_decay"),
        ("adagrad", {"initial_accumulator_value": INF}, "initial_accumulator_value"),
        ("ftrl", {"l2_regularization_strength": INF}, "l2_regularization_strength"),
        ("ftrl", {"learning_rate_power": -INF}, "learning_rate_power"),
        ("sgd", {"clipnorm": INF}, "clipnorm"),
        ("sgd", {"global_clipnorm": NAN}, "global_clipnorm"),
        ("sgd", {"use_ema": True, "ema_momentum": NAN}, "ema_momentum"),
        ("sgd", {"loss_scale_factor": INF}, "loss_scale_factor"),
    ],
)
def test_nonfinite_hyperparameters_are_refused(name, kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`.*(finite|must be in)"):
        optimizers.get(name, **kwargs)


@pytest.mark.parametrize(
    "name, kwargs, argument",
    [
        ("adagrad", {"initial_accumulator_value": 0.0, "epsilon": 0.0}, "epsilon"),
        ("rowwise_adagrad", {"initial_accumulator_value": 0.0, "epsilon": 0.0}, "initial_accumulator_value"),
        ("adam", {"epsilon": 0.0}, "epsilon"),
        ("lazy_adam", {"epsilon": 0.0}, "epsilon"),
        ("adamw", {"epsilon": 0.0}, "epsilon"),
        ("ftrl", {"initial_accumulator_value": 0.0}, "initial_accumulator_value"),
    ],
)
def test_settings_that_divide_by_zero_are_refused(name, kwargs, argument):
    # Each of these writes NaN into a weight whose gradient is 0 on the first step.
    with pytest.raises(ValueError, match=f"`{argument}`"):
        optimizers.get(name, learning_rate=0.1, **kwargs)


ZERO_BUT_FINITE = [
    # (our name, Keras class, constructor arguments, reference step, its arguments)
    pytest.param("adagrad", keras.optimizers.Adagrad, {"initial_accumulator_value": 0.0}, ref.adagrad_step, {},
                 id="adagrad-accumulator0"),
    pytest.param("adagrad", keras.optimizers.Adagrad, {"initial_accumulator_value": 0.1, "epsilon": 0.0},
                 ref.adagrad_step, {"epsilon": 0.0}, id="adagrad-epsilon0"),
    pytest.param("ftrl", keras.optimizers.Ftrl, {"initial_accumulator_value": 0.0, "l2_regularization_strength": 0.1},
                 ref.ftrl_step, {"l2": 0.1}, id="ftrl-accumulator0-l2"),
    pytest.param("ftrl", keras.optimizers.Ftrl, {"initial_accumulator_value": 0.0, "beta": 0.5}, ref.ftrl_step,
                 {"beta": 0.5}, id="ftrl-accumulator0-beta"),
    pytest.param("ftrl", keras.optimizers.Ftrl, {"initial_accumulator_value": 0.0, "learning_rate_power": 0.0},
                 ref.ftrl_step, {"lr_power": 0.0}, id="ftrl-accumulator0-power0"),
]


@pytest.mark.parametrize("name, keras_cls, kwargs, step, ref_kwargs", ZERO_BUT_FINITE)
def test_zero_settings_that_stay_finite_match_keras_and_numpy(name, keras_cls, kwargs, step, ref_kwargs):
    # Zero gradients in column 0 are where a zero denominator would show.
    rng = np.random.default_rng(4)
    init = rng.normal(size=(3, 2))
    grads = rng.normal(size=(3, 3, 2))
    grads[:, :, 0] = 0.0
    ours, theirs = optimizers.get(name, learning_rate=0.1, **kwargs), keras_cls(learning_rate=0.1, **kwargs)
    var_ours, var_theirs = keras.Variable(init.astype(np.float32)), keras.Variable(init.astype(np.float32))
    want, slots = init, ref.initial_slots(name, init, kwargs["initial_accumulator_value"])
    for t, g in enumerate(grads):
        ours.apply_gradients([(tf.constant(g, tf.float32), var_ours)])
        theirs.apply_gradients([(tf.constant(g, tf.float32), var_theirs)])
        want, slots = step(want, slots, g, 0.1, t, **ref_kwargs)
    assert np.all(np.isfinite(var_ours.numpy()))
    np.testing.assert_allclose(var_ours.numpy(), want, **TOL)
    np.testing.assert_allclose(var_ours.numpy(), var_theirs.numpy(), **TOL)


def _complex(rng, shape):
    return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)


def test_complex_variable_dense_path_matches_keras_adagrad_and_numpy():
    rng = np.random.default_rng(5)
    init, grads = _complex(rng, (3, 2)), [_complex(rng, (3, 2)) for _ in range(3)]
    ours, theirs = optimizers.Adagrad(learning_rate=0.1), keras.optimizers.Adagrad(learning_rate=0.1)
    var_ours, var_theirs = keras.Variable(init), keras.Variable(init)
    want, acc = init.astype(np.complex128), np.full(init.shape, 0.1, np.complex128)
    for g in grads:
        ours.apply_gradients([(tf.constant(g), var_ours)])
        theirs.apply_gradients([(tf.constant(g), var_theirs)])
        # Keras's rule on complex numbers: g**2 (not |g|**2) and the principal square root.
        acc = acc + g.astype(np.complex128) ** 2
        want = want - 0.1 * g / np.sqrt(acc + 1e-7)
    np.testing.assert_allclose(var_ours.numpy(), want, **TOL)
    np.testing.assert_allclose(var_ours.numpy(), var_theirs.numpy(), **TOL)
    assert int(ours.iterations.numpy()) == 3


@pytest.mark.parametrize("bad", [complex(NAN, 0.0), complex(0.0, INF)], ids=["nan_real", "inf_imag"])
def test_complex_nonfinite_gradient_is_caught(bad):
    init = np.array([1 + 1j, 2 - 1j], np.complex64)
    var = keras.Variable(init, name="weights")
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or Inf in the gradients"):
        optimizers.Adagrad(learning_rate=0.1).apply_gradients([(tf.constant([0.5 + 0.5j, bad], tf.complex64), var)])
    np.testing.assert_array_equal(var.numpy(), init)
    skipping = optimizers.Adagrad(learning_rate=0.1, nonfinite="skip")
    skipping.apply_gradients([(tf.constant([0.5 + 0.5j, bad], tf.complex64), var)])
    np.testing.assert_array_equal(var.numpy(), init)
    assert int(skipping.skipped_steps.numpy()) == 1
