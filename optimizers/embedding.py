"""`SparseEmbedding`: a lookup that reads only the rows a batch uses."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from optimizers import fast_path
from optimizers.distributed import local_variable
from optimizers.initializers import RowUniform, can_fill_now, fill_rows
from optimizers.precision import check_trainable_dtype

COMBINERS = ("sum", "mean", "sqrtn")


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
    in the layer's compute dtype (rows are cast after the gather). With a
    `combiner`, the input is a bag of ids per example, a `[batch, ids]`
    matrix or a `tf.RaggedTensor` `[batch, (ids)]`, optionally with per-id
    `weights` of the same structure, and the output is `[batch, output_dim]`:
    the bag's rows summed (`"sum"`), divided by the sum of its weights
    (`"mean"`; the bag's length without weights) or by the root of the sum of
    their squares (`"sqrtn"`). An empty bag gives zeros.

    On a CPU the lookup runs in embedopt's fused kernel
    (`optimizers.kernels`), which reads the rows in place and whose gradient
    comes out with its ids already summed and sorted, so the optimizer's
    deduplication has nothing left to do; elsewhere (GPU, XLA, kernels
    unavailable) it is `tf.gather` with TensorFlow's segment sums. Both
    paths give the same values.

    The table must not be float16 or bfloat16 (`TypeError`): its updates
    would round away. Use a mixed-precision policy (`dtype="mixed_float16"`,
    or `keras.mixed_precision.set_global_policy("mixed_float16")`), which
    keeps the table in float32 and casts only the gathered rows.

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
        combiner: None (one row per id, the default), `"sum"`, `"mean"` or
            `"sqrtn"` (pool each bag of ids into one row).

    Example:
        >>> emb = optimizers.SparseEmbedding(1_000_000, 32)
        >>> vectors = emb(tf.constant([[3, 17], [42, 0]]))  # shape (2, 2, 32)
    """

    def __init__(self, input_dim, output_dim, embeddings_initializer="uniform", embeddings_regularizer=None,
                 validate_ids=True, combiner=None, **kwargs):
        # The table stays in its variable dtype: autocasting would copy it.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        check_trainable_dtype(f"SparseEmbedding {self.name!r}", self.variable_dtype)
        for name, value in (("input_dim", input_dim), ("output_dim", output_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"SparseEmbedding: `{name}` must be a positive integer, got {value!r}")
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.embeddings_regularizer = keras.regularizers.get(embeddings_regularizer)
        self.validate_ids = bool(validate_ids)
        if combiner is not None and combiner not in COMBINERS:
            raise ValueError(f"SparseEmbedding: `combiner` must be None or one of {COMBINERS}, got {combiner!r}")
        self.combiner = combiner

    def build(self, input_shape=None):
        # A RowUniform table is filled in chunks: its build peaks near 1x the table, not 3x.
        row_wise = isinstance(self.embeddings_initializer, RowUniform) and can_fill_now()
        self.embeddings = self.add_weight(
            shape=(self.input_dim, self.output_dim),
            initializer="zeros" if row_wise else self.embeddings_initializer,
            regularizer=self.embeddings_regularizer,
            name="embeddings",
            # Keras enters an autocast scope for a mixed layer even with autocast=False, and an autocast variable
            # would then read as a cast copy of the whole table: cast the gathered rows instead.
            autocast=False,
        )
        if row_wise:
            with tf.init_scope():  # Keras may build while tracing `call`: fill the variable eagerly
                fill_rows(self.embeddings, self.embeddings_initializer, np.arange(self.input_dim))
        self.built = True

    def call(self, ids, weights=None):
        if not ids.dtype.is_integer:
            raise TypeError(f"SparseEmbedding {self.name!r}: ids must be integers, got {ids.dtype.name}")
        if weights is not None and self.combiner is None:
            raise ValueError(f"SparseEmbedding {self.name!r}: `weights` need a `combiner`")
        values = ids.values if isinstance(ids, tf.RaggedTensor) else ids
        if self.validate_ids:
            checked = check_ids(f"SparseEmbedding {self.name!r}", values, self.input_dim)
            ids = ids.with_values(checked) if isinstance(ids, tf.RaggedTensor) else checked
        table = local_variable(self.embeddings.value)
        kernel = fast_path.use_kernels(table) and values.dtype in fast_path.KERNEL_INDEX_DTYPES
        if self.combiner is None:
            rows = _kernel_gather(table, ids, self.output_dim) if kernel else tf.gather(table, ids)
        elif kernel:
            from optimizers.kernels import ops

            rows = ops.pooled_lookup(table, ids, weights=_weights_of(weights, table.dtype), combiner=self.combiner)
        else:
            rows = pooled_lookup_tf(table, ids, _weights_of(weights, table.dtype), self.combiner)
        return tf.cast(rows, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        if self.combiner is not None:
            return (input_shape[0], self.output_dim)
        return tuple(input_shape) + (self.output_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(
            input_dim=self.input_dim,
            output_dim=self.output_dim,
            embeddings_initializer=keras.initializers.serialize(self.embeddings_initializer),
            embeddings_regularizer=keras.regularizers.serialize(self.embeddings_regularizer),
            validate_ids=self.validate_ids,
            combiner=self.combiner,
        )
        return config


def _weights_of(weights, dtype):
    if weights is None:
        return None
    if isinstance(weights, tf.RaggedTensor):
        return weights.with_values(tf.cast(weights.values, dtype))
    return tf.cast(weights, dtype)


def _kernel_gather(table, ids, output_dim):
    """`tf.gather(table, ids)` as a pooled lookup of bags of one (its gradient comes out deduplicated)."""
    from optimizers.kernels import ops

    rows = ops.pooled_lookup(table, tf.reshape(ids, [-1]))
    return tf.reshape(rows, tf.concat([tf.shape(ids), [output_dim]], 0))


def pooled_lookup_tf(table, ids, weights, combiner):
    """The TF-ops pooled lookup (`SparseEmbedding`'s combiner off the kernel path): gather, weigh, segment-sum.

    `ids` is a `[batch, n]` matrix or a `tf.RaggedTensor` `[batch, (n)]`; `weights` the same structure or None.
    """
    if not isinstance(ids, tf.RaggedTensor):
        ids = tf.RaggedTensor.from_tensor(ids)
        weights = None if weights is None else tf.RaggedTensor.from_tensor(weights)
    values = tf.gather(table, ids.values)
    w = tf.ones_like(ids.values, table.dtype) if weights is None else weights.values
    segments, bags = ids.value_rowids(), ids.nrows()
    pooled = tf.math.unsorted_segment_sum(values * w[:, None], segments, bags)
    if combiner == "sum":
        return pooled
    divisor = tf.math.unsorted_segment_sum(w if combiner == "mean" else w * w, segments, bags)
    divisor = divisor if combiner == "mean" else tf.sqrt(divisor)
    return tf.math.divide_no_nan(pooled, divisor[:, None])
