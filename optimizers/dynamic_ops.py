"""Tensor functions behind `DynamicEmbedding`: the sketch hash, the resident-row lookup and its gradient,
the LFU victims, writes to every replica's copy of a variable, and the merge of the replicas' keys.

None of them touches the layer; `optimizers/dynamic.py` composes them.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

_INT64_MIN = np.iinfo(np.int64).min
_LFU_MAX_COUNT = 2**31 - 1
_LFU_MAX_STEP = 2**32 - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB


def sketch_buckets(keys: tf.Tensor, depth: int, width: int) -> tf.Tensor:
    """int64 `[depth, n]`: the count-min sketch column of each key in each of `depth` rows.

    Row `d` hashes `key + (d + 1) * golden` with SplitMix64's finalizer (wrapping
    uint64 arithmetic) and keeps the low bits (`width` is a power of two).
    """
    keys = tf.cast(keys, tf.int64)
    z = tf.bitcast(keys, tf.uint64)[None, :]
    z = z + tf.constant(np.array([(d + 1) * _GOLDEN % 2**64 for d in range(depth)], np.uint64))[:, None]
    return tf.cast(_splitmix64_finalize(z) & tf.constant(np.uint64(width - 1)), tf.int64)


def _splitmix64_finalize(z: tf.Tensor) -> tf.Tensor:
    """SplitMix64's finalizer on uint64 `z` (wrapping arithmetic), as the kernels' `SplitMix64Finalize`."""
    # Constants go in as NumPy uint64: inside tf.function a Python int above 2**63 is rounded through float64.
    z = (z ^ tf.bitwise.right_shift(z, tf.constant(30, tf.uint64))) * tf.constant(np.uint64(_MIX1))
    z = (z ^ tf.bitwise.right_shift(z, tf.constant(27, tf.uint64))) * tf.constant(np.uint64(_MIX2))
    return z ^ tf.bitwise.right_shift(z, tf.constant(31, tf.uint64))


def gather_resident(table, default: tf.Tensor, rows: tf.Tensor, position: tf.Tensor) -> tf.Tensor:
    """`[n, dim]`: entry i is `table[rows[position[i]]]`, or `default[0]` where that row is negative.

    `rows` holds one row (or -1) per distinct key and `position` maps each
    looked-up key to its distinct key (as `tf.unique` gives: each distinct
    key occurs). The gradient reaching `table` is a `tf.IndexedSlices` with
    one entry per distinct resident key (no duplicates, nothing for keys that
    read the default). It is built by one
    sum of the output gradient's rows per distinct key, with the embedopt
    kernel of the fixed table's gradient where the kernels load
    (`optimizers.fast_path`), else tf.unique + a segment sum: TensorFlow's
    own gradient of concat-then-gather densifies the `n` rows twice, and its
    `unsorted_segment_sum` alone takes ~30 ms for 106k x 32 rows on 2 cores.
    """
    from optimizers import fast_path

    hit = rows >= 0
    # Entry 0 is the default; entry j > 0 the j-th resident distinct key's row.
    entry = tf.gather(tf.where(hit, tf.cumsum(tf.cast(hit, tf.int32)), 0), position)
    vectors = tf.gather(table, tf.boolean_mask(rows, hit))
    use_kernel = fast_path.use_kernels(table)

    @tf.custom_gradient
    def expand(default, vectors):
        entries = tf.concat([default, vectors], axis=0)

        def grad(upstream):
            dense = _sum_by_entry(upstream, entry, tf.shape(entries)[0], use_kernel)
            return dense[:1], dense[1:]

        return tf.gather(entries, entry), grad

    return expand(tf.cast(default, vectors.dtype), vectors)


def pooled_resident(table, rows: tf.Tensor, position: tf.Tensor) -> tf.Tensor:
    """`[n, dim]`: entry i is `table[rows[position[i]]]`, or zeros where that row is negative (kernels only).

    One kernel (`EmbedoptResidentLookup`) whose gradient is a `tf.IndexedSlices`
    with one entry per distinct resident key, rows ascending, each summed in
    input order as `gather_resident`'s: `position` already groups the keys,
    so neither pass sorts the batch.
    """
    from optimizers.kernels import ops

    return ops.resident_lookup(table, rows, position)


def _sum_by_entry(upstream, entry, num_entries, use_kernel):
    """`[num_entries, dim]`: row j sums the rows of `upstream` whose `entry` is j (zeros where none is)."""
    if not use_kernel:
        from optimizers import sparse

        summed = sparse.dedup_indexed_slices(tf.IndexedSlices(upstream, entry))
        return tf.scatter_nd(tf.cast(summed.indices, tf.int32)[:, None], summed.values,
                             tf.stack([num_entries, tf.shape(upstream)[1]]))
    from optimizers.kernels import ops

    # The fixed table's own gradient kernel, on bags of one: ids ascending, each summed in input order.
    n = tf.size(entry, out_type=tf.int64)
    ids, summed = ops.pooled_lookup_grad(upstream, entry, tf.range(n + 1), None, num_entries)
    # In the layer every entry >= 1 is read (one per resident distinct key) and entry 0, the default, may not
    # be: then a zero row in front is all it takes; other gaps take a scatter.
    count = tf.size(ids, out_type=tf.int64)
    num_entries = tf.cast(num_entries, tf.int64)
    return tf.case([(count == num_entries, lambda: summed),
                    (tf.logical_and(count == num_entries - 1, tf.reduce_min(ids) >= 1),
                     lambda: tf.concat([tf.zeros_like(summed[:1]), summed], axis=0))],
                   default=lambda: tf.scatter_nd(tf.cast(ids, tf.int64)[:, None], summed,
                                                 tf.stack([num_entries, tf.shape(summed, out_type=tf.int64)[1]])))


def lfu_victims(counts, last_seen, num_evict, used, protected_rows) -> tf.Tensor:
    """The `num_evict` rows below `used`, not in `protected_rows`, in LFU order: smallest count, then smallest
    last-seen step, then lower row.

    Counts and steps are compared clamped, as the int64 key
    `min(count, 2**31 - 1) << 32 | min(last_seen, 2**32 - 1)` (negative values
    as 0). One `top_k` over all `capacity` keys (it keeps the lower index first
    among equal values): O(capacity) on a step that evicts. The TF path
    (replicated, multi-worker and hash-sharded steps) pays it; the policy
    kernel keeps the same order in buckets instead (`lfu_buckets.h`).
    """
    capacity = tf.shape(counts, out_type=tf.int64)[0]
    key = tf.bitwise.bitwise_or(tf.bitwise.left_shift(tf.clip_by_value(counts, 0, _LFU_MAX_COUNT),
                                                       tf.constant(32, tf.int64)),
                                tf.clip_by_value(last_seen, 0, _LFU_MAX_STEP))
    evictable = tf.range(capacity) < used
    evictable = tf.tensor_scatter_nd_update(evictable, protected_rows[:, None],
                                            tf.zeros(tf.shape(protected_rows), tf.bool))
    # Keys are >= 0, so -key > INT64_MIN: rows that may not be evicted come after every other.
    score = tf.where(evictable, -key, tf.constant(_INT64_MIN, tf.int64))
    _, victims = tf.math.top_k(score, k=tf.cast(num_evict, tf.int32), sorted=True)
    return tf.cast(victims, tf.int64)


def write_all(variable, update_fn):
    """Applies `update_fn(v)` to every copy of `variable` (each replica's under a MirroredStrategy).

    Call it in cross-replica context (a `merge_call` function, or outside any
    strategy), where `DynamicEmbedding` runs its policy once for all replicas.
    """
    if not isinstance(variable, tf.distribute.DistributedValues):  # a per-process variable (a sharded table's)
        return update_fn(variable)
    return tf.distribute.get_strategy().extended.update(variable, update_fn, group=True)


def merge_replica_keys(strategy, unique, counts):
    """The global batch's distinct keys in first-occurrence order, their counts, and each replica's map into them.

    `unique` and `counts` are per-replica values (or plain tensors): each
    replica's distinct keys, in its first-occurrence order, and their counts.
    Replica 0 holds the first part of the global batch, so the distinct keys
    of the concatenation, in order, are those of the global batch.

    Returns:
        `(keys, counts, parts)`: `parts[r]` gives, for each of replica r's
        distinct keys, its index in `keys`.
    """
    uniques = strategy.experimental_local_results(unique)
    countss = strategy.experimental_local_results(counts)
    if len(uniques) == 1:
        return uniques[0], countss[0], [tf.range(tf.size(uniques[0]))]
    keys, index = tf.unique(tf.concat(uniques, axis=0))
    total = tf.math.unsorted_segment_sum(tf.concat(countss, axis=0), index, tf.size(keys))
    sizes = [tf.size(u) for u in uniques]
    return keys, total, tf.split(index, sizes)


def spans_workers(strategy) -> bool:
    """Whether `strategy` has replicas in other processes (MultiWorkerMirroredStrategy over several workers)."""
    if not tf.distribute.has_strategy() or strategy.num_replicas_in_sync == 1:
        return False
    return strategy.num_replicas_in_sync > len(strategy.extended.worker_devices)


def gather_worker_keys(context, unique, counts):
    """In replica context, across every replica of every worker: the global batch's distinct keys in
    first-occurrence order, their counts, and this replica's map into them.

    Each replica's distinct keys (`unique`, in its first-occurrence order) and
    `counts` are all-gathered in replica order, padded to the largest
    replica's number, so every replica of every worker computes the same
    `keys` and `counts`: those of one replica on the global batch. Sends
    `num_replicas x (most distinct keys of a replica) x 16` bytes per replica.

    Returns:
        `(keys, counts, mine)`: `mine` gives, for each of this replica's
        distinct keys, its index in `keys`.
    """
    size = tf.size(unique)
    sizes = context.all_gather(tf.reshape(size, [1]), axis=0)
    width = tf.reduce_max(sizes)
    both = tf.stack([tf.pad(unique, [[0, width - size]]), tf.pad(counts, [[0, width - size]])], axis=1)
    gathered = context.all_gather(both, axis=0)
    valid = tf.reshape(tf.sequence_mask(sizes, width), [-1])
    gathered = tf.boolean_mask(gathered, valid)
    keys, index = tf.unique(gathered[:, 0])
    total = tf.math.unsorted_segment_sum(gathered[:, 1], index, tf.size(keys))
    offset = tf.reduce_sum(sizes[:context.replica_id_in_sync_group])
    return keys, total, index[offset:offset + size]


def owner_of(keys: tf.Tensor, num_shards: int) -> tf.Tensor:
    """int64: the worker that owns each key of a hash-sharded dynamic table, `SplitMix64(key) >> 33 mod N`.

    The finalizer of `sketch_buckets` with no offset (the sketch rows add
    `(d + 1) * golden`), so owners and sketch columns are independent hashes.
    """
    z = _splitmix64_finalize(tf.bitcast(tf.cast(keys, tf.int64), tf.uint64))
    return tf.math.floormod(tf.cast(tf.bitwise.right_shift(z, tf.constant(33, tf.uint64)), tf.int64), num_shards)
