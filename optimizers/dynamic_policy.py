"""One training step of `DynamicEmbedding`'s admission and eviction policy (the module docstring of
`optimizers/dynamic.py` states it), on the layer's variables and hash table.

Every write goes through `write_all`, so under a MirroredStrategy each replica's copy gets it. Where
the kernels serve the layer (one replica, a float32 table), `EmbedoptDynamicPolicy` does the whole step
in one op, in place, with the same results bit for bit; these TF ops are its reference.
"""

from __future__ import annotations

import tensorflow as tf

from optimizers.dynamic_index import tf_index_update
from optimizers.dynamic_ops import lfu_victims, sketch_buckets, write_all


def policy_step(layer, unique, counts, rows=None, native=None):
    """Updates `layer`'s policy state for one training batch's distinct keys; returns their rows afterwards.

    Runs once per step for all replicas, in cross-replica context (`DynamicEmbedding._policy_in_sync`).
    `rows`: the keys' rows from `native` (the kernels' index, which then takes
    this step's evictions and admissions), or None: the TF-ops path looks them
    up in, and updates, the layer's hash table.
    """
    def scatter(variable, indices, values, op="scatter_update"):
        write_all(variable.value, lambda v: getattr(v, op)(tf.IndexedSlices(values, indices)))

    def assign(variable, value):
        write_all(variable.value, lambda v: v.assign(value))

    if native is not None and layer.embeddings.dtype == tf.float32:
        return native.policy_step(layer, unique, counts, rows)  # the steps below, in one kernel
    if rows is None:
        rows = tf.reshape(layer.key_to_row.lookup(unique), [-1])
    step = layer.steps.value + 1
    assign(layer.steps, step)
    resident = rows >= 0
    resident_rows = tf.boolean_mask(rows, resident)
    if layer.eviction == "lru":
        scatter(layer.row_stamps, resident_rows, tf.fill(tf.shape(resident_rows), step))
    else:
        scatter(layer.row_stamps, resident_rows, tf.boolean_mask(counts, resident), "scatter_add")
        scatter(layer.lfu_last_seen, resident_rows, tf.fill(tf.shape(resident_rows), step))

    candidate_at = tf.where(tf.logical_not(resident))[:, 0]
    candidate_keys = tf.gather(unique, candidate_at)
    candidate_counts = tf.gather(counts, candidate_at)
    if layer.sketch is not None:
        if layer.sketch_decay_every:
            def halve():
                write_all(layer.sketch.value, lambda v: v.assign(v // 2))
                return tf.constant(True)

            tf.cond(tf.equal(step % layer.sketch_decay_every, 0), halve, lambda: tf.constant(False))
        buckets = sketch_buckets(candidate_keys, layer.sketch_depth, layer.sketch_width)
        depth = tf.broadcast_to(tf.range(layer.sketch_depth, dtype=tf.int64)[:, None], tf.shape(buckets))
        cells = tf.reshape(tf.stack([depth, buckets], axis=-1), [-1, 2])
        added = tf.reshape(tf.broadcast_to(candidate_counts[None, :], tf.shape(buckets)), [-1])
        write_all(layer.sketch.value, lambda v: v.scatter_nd_add(cells, added))
        estimate = tf.reduce_min(tf.reshape(tf.gather_nd(layer.sketch.value, cells), tf.shape(buckets)), axis=0)
        admit = estimate >= layer.admit_after
        candidate_at = tf.boolean_mask(candidate_at, admit)
        candidate_keys = tf.boolean_mask(candidate_keys, admit)
        candidate_counts = tf.boolean_mask(candidate_counts, admit)

    used = tf.identity(layer.rows_in_use.value)
    free = layer.capacity - used
    evictable = used - tf.size(resident_rows, out_type=tf.int64)
    num_admit = tf.minimum(tf.size(candidate_keys, out_type=tf.int64), free + evictable)
    num_fresh = tf.minimum(num_admit, free)
    num_evict = num_admit - num_fresh
    new_at = candidate_at[:num_admit]
    new_keys = candidate_keys[:num_admit]
    if layer.lru_log is not None:
        pick = lambda: layer.lru_log.victims(layer.row_stamps, num_evict, step, used)  # noqa: E731
    else:
        def pick():
            return lfu_victims(layer.row_stamps.value, layer.lfu_last_seen.value, num_evict, used, resident_rows)
    victims = tf.cond(num_evict > 0, pick, lambda: tf.zeros([0], tf.int64))
    victim_keys = tf.gather(layer.row_keys.value, victims)
    new_rows = tf.concat([tf.range(used, used + num_fresh), victims], axis=0)
    if native is not None:
        native.update(victim_keys, new_keys, new_rows, step)
    else:
        tf_index_update(layer.key_to_row, victim_keys, new_keys, new_rows)
    scatter(layer.row_keys, new_rows, new_keys)
    stamps = tf.fill(tf.shape(new_rows), step) if layer.eviction == "lru" else candidate_counts[:num_admit]
    scatter(layer.row_stamps, new_rows, stamps)
    if layer.lfu_last_seen is not None:
        scatter(layer.lfu_last_seen, new_rows, tf.fill(tf.shape(new_rows), step))
    scatter(layer.embeddings, new_rows, _initial_rows(layer, tf.size(new_rows), step))
    scatter(layer.assigned_rows, tf.range(num_admit), new_rows)
    assign(layer.num_assigned, num_admit)
    assign(layer.rows_in_use, used + num_fresh)
    if layer.lru_log is not None:
        layer.lru_log.append(layer.row_stamps, tf.concat([resident_rows, new_rows], axis=0), step)
    rows = tf.tensor_scatter_nd_update(rows, new_at[:, None], new_rows)
    # Lookups that read the default: all but those of resident keys and of the keys admitted now.
    total = tf.reduce_sum(counts)
    defaults = total - tf.reduce_sum(tf.boolean_mask(counts, resident)) - tf.reduce_sum(candidate_counts[:num_admit])
    for variable, delta in ((layer.admissions, num_admit), (layer.evictions, num_evict),
                            (layer.lookups, total), (layer.default_lookups, defaults)):
        assign(variable, variable.value + delta)
    return rows


def _initial_rows(layer, n, step):
    """`[n, output_dim]` new rows: zeros, or U(-init_scale, init_scale) from a stateless RNG seeded by (seed, step)."""
    dtype = layer.embeddings.dtype
    if layer.embeddings_initializer == "zeros" or layer.init_scale == 0:
        return tf.zeros([n, layer.output_dim], dtype)
    seed = tf.stack([tf.constant(layer.seed, tf.int64), step])
    return tf.random.stateless_uniform([n, layer.output_dim], seed=seed, minval=-layer.init_scale,
                                       maxval=layer.init_scale, dtype=dtype)
