"""Gradient preprocessing that keeps `tf.IndexedSlices` sparse.

Everything here costs O(rows touched x dim) for a sparse gradient: the
functions look at `.values` and never build a dense tensor of the variable's
shape. A gradient is deduplicated before it is clipped, so the norms and the
clipped values are those of the densified gradient.
"""

from __future__ import annotations

import tensorflow as tf


def dedup_indexed_slices(grad: tf.IndexedSlices) -> tf.IndexedSlices:
    """Sums the values of repeated indices: one row per distinct index.

    A row looked up twice in a batch must get one update with the summed
    gradient, as the dense gradient would; applying two updates (what
    Keras's built-in optimizers do with raw slices) is wrong for every
    non-linear rule (Adagrad, Adam, FTRL, ...).
    """
    unique_indices, positions = tf.unique(grad.indices)
    summed = tf.math.unsorted_segment_sum(grad.values, positions, tf.shape(unique_indices)[0])
    return tf.IndexedSlices(summed, unique_indices, grad.dense_shape)


def _values(grad):
    return grad.values if isinstance(grad, tf.IndexedSlices) else grad


def _with_values(grad, values):
    if isinstance(grad, tf.IndexedSlices):
        return tf.IndexedSlices(values, grad.indices, grad.dense_shape)
    return values


def all_finite(values: tf.Tensor) -> tf.Tensor:
    """A bool scalar: whether `values` hold no NaN or Inf.

    `tf.math.is_finite` has no complex kernel, so a complex tensor is finite
    when both its real and its imaginary parts are.
    """
    if values.dtype.is_complex:
        return tf.logical_and(all_finite(tf.math.real(values)), all_finite(tf.math.imag(values)))
    return tf.reduce_all(tf.math.is_finite(values))


def finite_flags(grads) -> tf.Tensor:
    """A bool vector: whether each gradient is free of NaN and Inf."""
    return tf.stack([all_finite(_values(g)) for g in grads])


def squared_norm(grad) -> tf.Tensor:
    """float32 scalar: the squared L2 norm of `grad` (its values, for `tf.IndexedSlices`)."""
    return tf.reduce_sum(tf.square(tf.cast(_values(grad), tf.float32)))


def clip_by_norm(grad, clipnorm, square=None):
    """Scales `grad` so that its L2 norm is at most `clipnorm`.

    `square`, when given, is the squared norm to use instead of `grad`'s own:
    for a shard of a row-sharded gradient, the all-reduced square of the
    whole gradient, so every shard is scaled as the whole would be.
    """
    values = _values(grad)
    if square is None:
        return _with_values(grad, tf.clip_by_norm(values, tf.cast(clipnorm, values.dtype)))
    norm = tf.cast(tf.sqrt(square), values.dtype)
    clipnorm = tf.cast(clipnorm, values.dtype)
    return _with_values(grad, values * clipnorm / tf.maximum(norm, clipnorm))


def clip_by_value(grad, clipvalue):
    """Clips each element of `grad` to `[-clipvalue, clipvalue]`."""
    values = _values(grad)
    limit = tf.cast(clipvalue, values.dtype)
    return _with_values(grad, tf.clip_by_value(values, -limit, limit))


def clip_by_global_norm(grads, clipnorm, squares=None):
    """Scales all `grads` together so that their joint L2 norm is at most `clipnorm`.

    Same formula as `keras.optimizers`: `scale = min(1, clipnorm / norm)`.
    `squares` (one float32 scalar per gradient) replaces their own squared
    norms, as for `clip_by_norm`.
    """
    if squares is None:
        squares = [squared_norm(g) for g in grads]
    norm = tf.sqrt(tf.add_n(squares))
    clipnorm = tf.cast(clipnorm, tf.float32)
    scale = clipnorm * tf.minimum(1.0 / norm, 1.0 / clipnorm)
    return [_with_values(g, _values(g) * tf.cast(scale, _values(g).dtype)) for g in grads]
