"""Small drivers shared by the optimizer tests (no update math here)."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

import optimizers


def make(case, **overrides):
    kwargs = dict(case.kwargs, learning_rate=case.lr)
    kwargs.update(overrides)
    return optimizers.get(case.name, **kwargs)


def sparse_grad(indices, values, num_rows):
    values = np.asarray(values, np.float32)
    return tf.IndexedSlices(
        tf.constant(values), tf.constant(indices, tf.int64), tf.constant((num_rows,) + values.shape[1:], tf.int64)
    )


def apply_steps(opt, var_init, grads, use_function=True):
    """Applies `grads` (one per step) to a fresh variable; returns it."""
    var = keras.Variable(np.asarray(var_init, np.float32), name="table")
    opt.build([var])

    def step(g):
        opt.apply_gradients([(g, var)])

    fn = tf.function(step) if use_function else step
    for g in grads:
        fn(g)
    return var


def slot_values(opt, var, case):
    return {name: opt.get_slot(var, name).numpy() for name in case.slots}
