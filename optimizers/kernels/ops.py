"""Python wrappers of the embedopt kernels, and the gradient of the pooled lookup.

Each wrapper raises `RuntimeError` (with `optimizers.kernels.status()`'s
reason) when the kernels are unavailable; callers that have a TF-ops path
check `optimizers.kernels.load()` first.

Hyper-parameters of `sparse_apply`, one float vector per step, in this order
(`HYPERS`); the caller computes every scalar (a schedule's learning rate,
`lr * decay_rate**t` for DecayingSGD, ...). `weight_decay=True` appends `wd`.

| rule | hypers | slots (`SLOTS`) |
|---|---|---|
| `sgd` | `[lr]` | none |
| `momentum` | `[lr, momentum]` | `m`, var's shape |
| `adagrad` | `[lr, epsilon]` | `accumulator`, var's shape |
| `rowwise_adagrad` | `[lr, epsilon]` | `accumulator`, shape `[rows]` |
| `adam` (lazy) | `[lr, beta_1, beta_2, epsilon, step]` | `m`, `v` |
| `ftrl` | `[lr, lr_power, l1, l2, l2_shrinkage, beta]` | `accumulator`, `linear` |

`step` counts the steps applied before this one (0 first); the kernel computes
`alpha = lr * sqrt(1 - beta_2**(step+1)) / (1 - beta_1**(step+1))` as
`rules.adam` does. float64 tables take float64 hypers and compute in double;
float32, float16 and bfloat16 tables take float32 hypers and compute in float
(half types are rounded once when stored).
"""

from __future__ import annotations

import keras
import tensorflow as tf
from tensorflow.python.ops import resource_variable_ops  # variable_accessed: no public API lets an op be taped

import optimizers.kernels as _kernels

HYPERS = {
    "sgd": ("lr",),
    "momentum": ("lr", "momentum"),
    "adagrad": ("lr", "epsilon"),
    "rowwise_adagrad": ("lr", "epsilon"),
    "adam": ("lr", "beta_1", "beta_2", "epsilon", "step"),
    "ftrl": ("lr", "lr_power", "l1", "l2", "l2_shrinkage", "beta"),
}
SLOTS = {
    "sgd": (),
    "momentum": ("m",),
    "adagrad": ("accumulator",),
    "rowwise_adagrad": ("accumulator",),
    "adam": ("m", "v"),
    "ftrl": ("accumulator", "linear"),
}
COMBINERS = ("sum", "mean", "sqrtn")


def _ops():
    module = _kernels.load()
    if module is None:
        raise RuntimeError(f"embedopt kernels are unavailable: {_kernels.status()[1]}")
    return module


def _tf_variable(variable):
    """The `tf.Variable` behind a Keras variable (or the variable itself)."""
    return variable.value if isinstance(variable, keras.Variable) else variable


def _as_hyper(value, dtype):
    # tf.cast(0.1, tf.float64) would round 0.1 to float32 first.
    return tf.cast(value, dtype) if tf.is_tensor(value) or isinstance(value, tf.Variable) else tf.constant(value, dtype)


def dedup(indices, values):
    """Sums the rows of repeated indices: `(unique_indices, summed)`.

    Args:
        indices: int32 or int64 vector `[N]`.
        values: `[N, ...]` float32, float64, float16 or bfloat16.

    Returns:
        `unique_indices` `[U]`, ascending, and `summed` `[U, ...]`, row `u`
        the sum in input order of the rows whose index is
        `unique_indices[u]` (the same bits whatever the thread count).
        Strictly ascending `indices` are returned with `values` unchanged.
    """
    return tuple(_ops().embedopt_dedup(indices, values))


def all_finite(values):
    """A bool scalar: whether `values` (float32, float64, float16 or bfloat16) hold no NaN or Inf.

    One parallel pass that keeps nothing, where `reduce_all(is_finite(x))`
    writes and rereads a bool per element; an empty tensor is finite.
    """
    return _ops().embedopt_all_finite(values)


def sparse_apply(variable, slots, indices, values, rule, hypers, *, nesterov=False, weight_decay=False,
                 assume_unique=False, use_locking=False):
    """Applies `rule` to the rows `indices` of `variable` and `slots`, in place.

    Duplicate indices are summed first (as `dedup`), unless `assume_unique`.
    Per distinct row: `var -= var * wd * lr` if `weight_decay`, then the rule
    of `optimizers.rules` (see the module docstring for `hypers`).

    Args:
        variable: `tf.Variable` or `keras.Variable`, `[rows, ...]`.
        slots: the rule's slot variables, in `SLOTS[rule]` order.
        indices: int32 or int64 `[U]`, each in `[0, rows)`; an id out of range
            raises `InvalidArgumentError` and changes nothing.
        values: the gradient rows, `[U] + variable.shape[1:]`, variable's dtype.
        rule: one of `HYPERS`.
        hypers: the hyper-parameter scalars (floats or scalar tensors) or a
            vector; cast to float64 for float64 tables, else float32.
        nesterov: Nesterov momentum (`rule="momentum"` only):
            `var -= lr * (g + momentum * m_new)`.
        weight_decay: whether `hypers` ends with `wd` for decoupled decay.
        assume_unique: the caller guarantees distinct indices (duplicates
            then race); strictly ascending indices are detected anyway.
        use_locking: hold the variables' locks exclusively (TF's
            `use_locking`); by default shared, as TF's sparse apply ops.

    Returns:
        The op (None when executing eagerly).
    """
    var = _tf_variable(variable)
    hyper_dtype = tf.float64 if var.dtype == tf.float64 else tf.float32
    if isinstance(hypers, (list, tuple)):
        hypers = tf.stack([_as_hyper(h, hyper_dtype) for h in hypers])
    else:
        hypers = _as_hyper(hypers, hyper_dtype)
    handles = [_tf_variable(s).handle for s in slots]
    return _ops().embedopt_sparse_apply(var.handle, handles, indices, values, hypers, rule=rule, nesterov=nesterov,
                                        weight_decay=weight_decay, assume_unique=assume_unique,
                                        use_locking=use_locking)


def bags(ids, row_splits=None, weights=None):
    """Flattens a bag structure to `(ids [N], row_splits int64 [B+1], weights [N] or None)`.

    `ids` is a `tf.RaggedTensor` `[B, (bag)]`, a dense `[B, F]` matrix (F ids
    per bag), or a vector with `row_splits` (without them, each id is a bag
    of one). `weights`, when given, has the same structure as `ids`.
    """
    if isinstance(ids, tf.RaggedTensor):
        if ids.ragged_rank != 1:
            raise ValueError(f"ids: expected a RaggedTensor [batch, (bag)] with ragged_rank 1, got {ids.ragged_rank}")
        row_splits = ids.row_splits
        ids = ids.values
        if isinstance(weights, tf.RaggedTensor):
            weights = weights.values
    else:
        ids = tf.convert_to_tensor(ids)
        if ids.shape.rank == 2:
            per_bag = tf.shape(ids, out_type=tf.int64)[1]
            row_splits = tf.range(tf.shape(ids, out_type=tf.int64)[0] + 1) * per_bag
            ids = tf.reshape(ids, [-1])
            weights = None if weights is None else tf.reshape(weights, [-1])
        elif ids.shape.rank != 1:
            raise ValueError(f"ids: expected a vector, a [batch, ids] matrix or a RaggedTensor, got shape {ids.shape}")
        elif row_splits is None:
            row_splits = tf.range(tf.size(ids, out_type=tf.int64) + 1)
    return ids, tf.cast(row_splits, tf.int64), weights


def pooled_lookup(table, ids, row_splits=None, weights=None, combiner="sum"):
    """Pooled lookup of bags of rows of `table`: `[B] + table.shape[1:]`.

    `pooled[b] = sum(w[n] * table[ids[n]] for n in bag b) / divisor(b)`, the
    divisor 1 (`sum`), the bag's weight sum (`mean`) or the root of its
    squared weights (`sqrtn`); an empty bag or a zero divisor gives zeros.
    Rows are read in place under the variable's shared lock; the table is
    never converted to a tensor. `tf.GradientTape` and `tf.gradients` give
    the table's gradient as deduplicated `tf.IndexedSlices` (ids ascending);
    `weights` get no gradient.

    Args:
        table: `tf.Variable` or `keras.Variable` `[rows, ...]`.
        ids: int32/int64 ids, structured as `bags` describes; each in
            `[0, rows)` (else `InvalidArgumentError`).
        row_splits: with a vector `ids`, the int64 bag offsets `[B + 1]`.
        weights: per-id weights of the table's dtype, or None.
        combiner: `"sum"`, `"mean"` or `"sqrtn"`.
    """
    if combiner not in COMBINERS:
        raise ValueError(f"combiner must be one of {COMBINERS}, got {combiner!r}")
    var = _tf_variable(table)
    ids, row_splits, weights = bags(ids, row_splits, weights)
    weights = tf.zeros([0], var.dtype) if weights is None else tf.convert_to_tensor(weights, var.dtype)
    resource_variable_ops.variable_accessed(var)  # so tapes watching `table` record the lookup
    # Outputs 1 and 2 are the ids' grouping, made beside the gather for the gradient (which then only sums).
    return _ops().embedopt_pooled_lookup(var.handle, ids, row_splits, weights, combiner=combiner)[0]


def pooled_lookup_grad(upstream, ids, row_splits, weights, num_rows, combiner="sum", groups=None):
    """The table's gradient of `pooled_lookup`, deduplicated: `(unique_ids, summed)`.

    `summed[u]` sums `w[n] / divisor(bag(n)) * upstream[bag(n)]` over the
    occurrences `n` of `unique_ids[u]`, in input order; `unique_ids` are
    ascending (so `dedup` of the result takes its fast path).

    Args:
        upstream: `[B, ...]` gradient of the pooled output.
        ids, row_splits: the lookup's flat ids and int64 offsets.
        weights: the lookup's weights `[N]`, or `[0]`/None for none.
        num_rows: the table's row count; ids must lie in `[0, num_rows)`.
        combiner: the lookup's combiner.
        groups: `(order, group_starts)`, the lookup op's outputs 1 and 2 (the ids grouped by a stable sort);
            None groups them here.
    """
    upstream = tf.convert_to_tensor(upstream)
    weights = tf.zeros([0], upstream.dtype) if weights is None else weights
    order, starts = groups if groups is not None else (tf.zeros([0], tf.int32), tf.zeros([0], tf.int32))
    return tuple(_ops().embedopt_pooled_lookup_grad(upstream, ids, row_splits, weights,
                                                    tf.cast(num_rows, tf.int64), order, starts, combiner=combiner))


@tf.RegisterGradient("EmbedoptPooledLookup")
def _pooled_lookup_gradient(op, upstream, *unused_group_grads):
    """As TensorFlow's `ResourceGather` gradient: `tf.IndexedSlices` for the table handle."""
    handle, ids, row_splits, weights = op.inputs
    shape = resource_variable_ops.variable_shape(handle)
    unique_ids, summed = pooled_lookup_grad(upstream, ids, row_splits, weights, shape[0],
                                            combiner=op.get_attr("combiner"), groups=(op.outputs[1], op.outputs[2]))
    return [tf.IndexedSlices(summed, unique_ids, shape), None, None, None]




def key_index_handle(shared_name):
    """A handle to the key -> row index named `shared_name` (a `DynamicEmbedding`'s; created on first use)."""
    return _ops().embedopt_key_index_handle(shared_name=shared_name)


def key_index_unique(index, keys, row_keys, rows_in_use, steps):
    """`(unique, position, counts, rows)` of the int64 vector `keys`, as `tf.unique_with_counts` plus a lookup.

    `unique` are the distinct keys in first-occurrence order, `keys[i] ==
    unique[position[i]]` (int32), `counts` int64, and `rows` the row of each
    distinct key in the index (-1: none). The index is first rebuilt from
    `row_keys[:rows_in_use]` (the variable) if its step stamp is not `steps`.
    """
    return tuple(_ops().embedopt_key_index_unique(index, keys, _tf_variable(row_keys).handle, rows_in_use, steps))


def key_index_update(index, removed_keys, inserted_keys, inserted_rows, step):
    """Removes `removed_keys`, maps `inserted_keys` to `inserted_rows`, stamps the index with `step`.

    Raises `FailedPreconditionError` unless the index was stamped `step - 1` (by this step's `key_index_unique`).
    """
    return _ops().embedopt_key_index_update(index, removed_keys, inserted_keys, inserted_rows, step)


def key_index_export(index, row_keys, rows_in_use, steps):
    """`(keys, rows)`: the index's entries (rebuilt first if its stamp is not `steps`)."""
    return tuple(_ops().embedopt_key_index_export(index, _tf_variable(row_keys).handle, rows_in_use, steps))


def key_index_reset(index):
    """Marks the index out of date: the next op that reads it rebuilds it from `row_keys`."""
    return _ops().embedopt_key_index_reset(index)



def resident_lookup(table, rows, position):
    """`[n] + table.shape[1:]`: entry i is `table[rows[position[i]]]`, or zeros where that row is -1.

    `rows` (int64): one row (or -1) per distinct key; `position` (int32): each
    occurrence's distinct key, as the key index's unique op gives them. Rows
    are read in place. The table's gradient (`resident_lookup_grad`) is
    deduplicated `tf.IndexedSlices`, rows ascending.
    """
    var = _tf_variable(table)
    resource_variable_ops.variable_accessed(var)  # so tapes watching `table` record the lookup
    return _ops().embedopt_resident_lookup(var.handle, rows, position, T=var.dtype)


def resident_lookup_grad(upstream, rows, position):
    """`(unique_rows, summed)`: the rows >= 0 of `rows` ascending, and each one's upstream rows summed in input order."""
    return tuple(_ops().embedopt_resident_lookup_grad(upstream, rows, position))


@tf.RegisterGradient("EmbedoptResidentLookup")
def _resident_lookup_gradient(op, upstream):
    """`tf.IndexedSlices` for the table handle, as TensorFlow's `ResourceGather` gradient."""
    handle, rows, position = op.inputs
    unique_rows, summed = resident_lookup_grad(upstream, rows, position)
    return [tf.IndexedSlices(summed, unique_rows, resource_variable_ops.variable_shape(handle)), None, None]



def fill_rows(variables, rows, values):
    """Sets the rows `rows` (int64, in range) of each variable to its scalar value, in place, in one pass.

    `variables` and `values`: one variable and one value, or lists of them (all of one dtype). Returns the op.
    """
    if not isinstance(variables, (list, tuple)):
        variables, values = [variables], [values]
    handles = [_tf_variable(v).handle for v in variables]
    dtype = _tf_variable(variables[0]).dtype
    return _ops().embedopt_fill_rows(handles, rows, [tf.constant(value, dtype) for value in values])


def dynamic_policy(index, unique, counts, rows, layer):
    """One training step of `layer`'s (a `DynamicEmbedding`'s) policy in one op; returns the rows of `unique` after it.

    `unique`, `counts` and `rows` come from this step's `key_index_unique`. The
    op updates the layer's variables and `index` in place, as
    `optimizers/dynamic_policy.py`'s TF ops do (float32 tables).
    """
    state = [layer.steps, layer.row_stamps, layer.row_keys, layer.rows_in_use, layer.assigned_rows,
             layer.num_assigned, layer.admissions, layer.evictions, layer.lookups, layer.default_lookups]
    if layer.sketch is not None:
        state.append(layer.sketch)
    if layer.lfu_last_seen is not None:
        state.append(layer.lfu_last_seen)
    if layer.lru_log is not None:
        log = layer.lru_log
        state += [log.rows, log.steps, log.head, log.tail]
    scale = layer.init_scale if layer.embeddings_initializer == "uniform" else 0.0
    return _ops().embedopt_dynamic_policy(
        index, unique, counts, rows, _tf_variable(layer.embeddings).handle, [_tf_variable(v).handle for v in state],
        admit_after=layer.admit_after, lfu=layer.eviction == "lfu", sketch_decay_every=layer.sketch_decay_every,
        init_scale=scale, seed=layer.seed)


__all__ = ["COMBINERS", "HYPERS", "SLOTS", "all_finite", "bags", "dedup", "dynamic_policy", "fill_rows", "key_index_export", "key_index_handle",
           "key_index_reset", "key_index_unique", "key_index_update", "pooled_lookup", "pooled_lookup_grad", "resident_lookup",
           "resident_lookup_grad",
           "sparse_apply"]
