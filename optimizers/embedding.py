"""`SparseEmbedding`: a lookup that reads only the rows a batch uses."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from optimizers.distributed import local_variable
from optimizers.initializers import RowUniform, can_fill_now, fill_rows


def check_ids(layer_name: str, ids: tf.Tensor, input_dim: int) -> tf.Tensor:
    """`ids`, after an assertion that they lie in `[0, input_dim)` naming the layer."""
    in_range = tf.logical_and(tf.reduce_all(ids >= 0), tf.reduce_all(ids < input_dim))
    check = tf.debugging.Assert(
        in_range,
        [f"{layer_name}: ids must be in [0, {input_dim}); got min", tf.reduce_min(ids), "max", tf.reduce_max(ids)],
    )
    with tf.control_dependencies([check]):
        return tf.identity(ids)


@keras.saving.register_keras_serializable(package="embedopt")
class SparseEmbedding(keras.layers.Layer):
    """Embedding table whose lookup gathers rows straight from the variable.

    `keras.layers.Embedding` turns its variable into a tensor before the
    lookup, which reads (and, under mixed precision, casts) the whole table
    every step. This layer gathers from the `tf.Variable` itself, so a step
    reads only the looked-up rows, and the gradient reaches the optimizer as
    `tf.IndexedSlices` for the sparse path of `optimizers`.

    Input: integer ids of any shape. Output: that shape + `(output_dim,)`,
    in the layer's compute dtype (rows are cast after the gather).

    Ids must lie in `[0, input_dim)`. An id outside that range raises
    `tf.errors.InvalidArgumentError` naming the layer and the range (on GPU
    `tf.gather` would otherwise return zeros silently). Reserve a row for
    missing or out-of-vocabulary values upstream (the preprocess component
    maps them to id 0). Pass `validate_ids=False` to drop the check once the
    input is known to be clean.

    Args:
        input_dim: number of rows (vocabulary size), > 0.
        output_dim: embedding width, > 0.
        embeddings_initializer: Keras initializer for the table.
        embeddings_regularizer: optional Keras regularizer. A regularizer on
            the whole table reads the whole table each step; prefer weight
            decay in the optimizer (`AdamW`) for large tables.
        validate_ids: check the id range (default True).

    Example:
        >>> emb = optimizers.SparseEmbedding(1_000_000, 32)
        >>> vectors = emb(tf.constant([[3, 17], [42, 0]]))  # shape (2, 2, 32)
    """

    def __init__(self, input_dim, output_dim, embeddings_initializer="uniform", embeddings_regularizer=None,
                 validate_ids=True, **kwargs):
        # The table stays in its variable dtype: autocasting would copy it.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        for name, value in (("input_dim", input_dim), ("output_dim", output_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"SparseEmbedding: `{name}` must be a positive integer, got {value!r}")
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.embeddings_regularizer = keras.regularizers.get(embeddings_regularizer)
        self.validate_ids = bool(validate_ids)

    def build(self, input_shape=None):
        # A RowUniform table is filled in chunks: its build peaks near 1x the table, not 3x.
        row_wise = isinstance(self.embeddings_initializer, RowUniform) and can_fill_now()
        self.embeddings = self.add_weight(
            shape=(self.input_dim, self.output_dim),
            initializer="zeros" if row_wise else self.embeddings_initializer,
            regularizer=self.embeddings_regularizer,
            name="embeddings",
        )
        if row_wise:
            with tf.init_scope():  # Keras may build while tracing `call`: fill the variable eagerly
                fill_rows(self.embeddings, self.embeddings_initializer, np.arange(self.input_dim))
        self.built = True

    def call(self, ids):
        if not ids.dtype.is_integer:
            raise TypeError(f"SparseEmbedding {self.name!r}: ids must be integers, got {ids.dtype.name}")
        if self.validate_ids:
            ids = check_ids(f"SparseEmbedding {self.name!r}", ids, self.input_dim)
        rows = tf.gather(local_variable(self.embeddings.value), ids)
        return tf.cast(rows, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.output_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            input_dim=self.input_dim,
            output_dim=self.output_dim,
            embeddings_initializer=keras.initializers.serialize(self.embeddings_initializer),
            embeddings_regularizer=keras.regularizers.serialize(self.embeddings_regularizer),
            validate_ids=self.validate_ids,
        )
        return config
