"""Validation and resolution of optimizer hyperparameters.

A hyperparameter is a number or a zero-argument callable returning one (as in
Keras); the learning rate may also be a `LearningRateSchedule`, which the
Keras base class handles. Numbers are checked when the optimizer is made
(finite, and in range); callables are resolved, not checked, at every step.
"""

from __future__ import annotations

import math
import numbers

import keras
import tensorflow as tf


def check_range(owner: str, name: str, value, *, low=None, high=None, low_open=False, high_open=False):
    """Raises `ValueError` naming `name` unless `value` is finite and lies in the range.

    NaN and Inf are refused whatever the range: one step would write them
    into every variable the optimizer updates. Callables are accepted as they
    are: their value is only known per step.
    """
    if callable(value) or isinstance(value, keras.optimizers.schedules.LearningRateSchedule):
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{owner}: `{name}` must be a number or a callable, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{owner}: `{name}` must be a finite number, got {value!r}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        interval = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
        raise ValueError(f"{owner}: `{name}` must be in {interval}, got {value!r}")
    return float(value)


def resolve(value, dtype):
    """The value of a hyperparameter for this step, as a tensor of `dtype`."""
    if callable(value):
        value = value()
    return tf.cast(value, dtype)


def serialize(value):
    """A JSON-friendly form of a hyperparameter for `get_config`."""
    if callable(value):
        return keras.saving.serialize_keras_object(value)
    return value


def deserialize(value):
    """The inverse of `serialize`."""
    if isinstance(value, dict):
        return keras.saving.deserialize_keras_object(value)
    return value
