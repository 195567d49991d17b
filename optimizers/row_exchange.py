"""The lookup exchange of a row-sharded table (`ShardedEmbedding`): ids out, rows back, gradients home.

Replica r of N holds the rows with `id % N == r`, at local row `id // N`.
A lookup, inside `strategy.run`:
  1. all-gather the batch's ids from every replica (N x batch ids);
  2. `tf.unique` them: the same distinct ids, in the same order, everywhere;
  3. gather the distinct ids this replica owns from its local shard;
  4. all-reduce (sum) the `[distinct, dim]` block, zero where not owned:
     every replica now has every distinct row;
  5. gather the rows of its own ids.
With a `combiner` the ids are bags (`tf.RaggedTensor`), whose id counts
differ between replicas: step 1 then also all-gathers the counts, so each
replica finds its own ids in the gathered list, and step 5 pools each bag's
rows locally (`pooled_lookup_tf` on the exchanged block).
The backward pass runs the same exchange in reverse: the upstream gradient
is summed per distinct id, all-reduced, and each replica keeps the rows it
owns, as `tf.IndexedSlices` on its shard, already summed over the global
batch. Communication is O(global batch x features x dim) per step, never
O(table). The optimizers apply those slices to the shard directly, with no
all-reduce (see `SparseOptimizer`).

With a `counter` (`optimizers.all_to_all.ByteCounter`) the exchange adds
what this replica sends, counted as the ring collectives that
MultiWorkerMirroredStrategy runs send it: an all-gather of `c` items sends
`(N - 1) x c` of them (plus its shape, 4 bytes, as the strategy gathers the
shapes first and pads to the longest), an all-reduce of `b` bytes sends
`2 (N - 1) / N x b` (reduce-scatter, then all-gather). `all_gather_step_bytes`
in `optimizers.exchange_cost` is the same count in NumPy.
"""

from __future__ import annotations

import tensorflow as tf


def exchange_rows(shard: tf.Variable, ids: tf.Tensor, num_shards: int, shard_index: int, counter=None,
                  owner: int | None = None) -> tf.Tensor:
    """The rows of `ids` (global, any shape) from a table sharded over the replicas; see the module docstring."""
    block, mine = exchange_block(shard, tf.reshape(ids, [-1]), num_shards, shard_index, counter=counter,
                                 owner=owner)
    rows = tf.gather(block, mine)
    return tf.reshape(rows, tf.concat([tf.shape(ids), [shard.shape[1]]], axis=0))


def exchange_block(shard: tf.Variable, ids: tf.Tensor, num_shards: int, shard_index: int,
                   equal_counts: bool = True, counter=None, owner: int | None = None) -> tuple[tf.Tensor, tf.Tensor]:
    """`(block, positions)`: the distinct rows of every replica's `ids` (a vector) and where this replica's are.

    `tf.gather(block, positions)` is the rows of `ids`. `equal_counts` says
    every replica has as many ids (a batch of one-hot ids); bags have not, and
    then the counts are all-gathered too. `counter.add(bytes)` is called in
    the forward and the backward pass (see the module docstring). With an
    `owner`, replica `owner` holds the whole table at local row = id (table_wise).
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync != num_shards:
        raise RuntimeError(
            f"a table sharded over {num_shards} replicas must be looked up inside `strategy.run` of the strategy "
            f"it was built under (replica context: {ctx}); to serve it, export it whole (see "
            "`optimizers.sharded.gather_table`)")
    width = shard.shape[1]
    count = tf.size(ids, out_type=tf.int64)
    # The strategy's all-gather pads unequal lengths itself; only the offset of this replica's ids is ours to find.
    all_ids = ctx.all_gather(ids, axis=0)  # [sum of the replicas' counts]
    others = num_shards - 1
    if equal_counts:
        start = shard_index * count
        gathered_bytes = others * (4 + 8 * count)
    else:
        counts = ctx.all_gather(count[None], axis=0)
        start = tf.reduce_sum(counts[:shard_index])
        gathered_bytes = others * (4 + 8) + others * (4 + 8 * tf.reduce_max(counts))
    distinct, position = tf.unique(all_ids, out_idx=tf.int64)
    if owner is None:
        owned = tf.where(tf.equal(distinct % num_shards, shard_index))[:, 0]
        local_rows = tf.gather(distinct, owned) // num_shards
    else:
        owned = tf.range(tf.size(distinct, out_type=tf.int64) if shard_index == owner else 0, dtype=tf.int64)
        local_rows = tf.gather(distinct, owned)
    num_distinct = tf.size(distinct, out_type=tf.int64)
    # Ring all-reduce of the [distinct, width] block: 2 (N - 1) / N of it leaves each replica.
    reduced_bytes = 2 * others * num_distinct * width * shard.dtype.size // num_shards
    if counter is not None:
        counter.add(gathered_bytes + reduced_bytes)

    @tf.custom_gradient
    def exchange(owned_rows):
        block = tf.scatter_nd(owned[:, None], owned_rows, tf.stack([num_distinct, width]))
        block = ctx.all_reduce(tf.distribute.ReduceOp.SUM, block)

        def grad(upstream):
            if counter is not None:
                counter.add(reduced_bytes)
            if isinstance(upstream, tf.IndexedSlices):
                upstream = tf.math.unsorted_segment_sum(upstream.values, upstream.indices, num_distinct)
            upstream = ctx.all_reduce(tf.distribute.ReduceOp.SUM, upstream)
            return tf.gather(upstream, owned)

        return block, grad

    block = exchange(tf.gather(shard, local_rows))
    return block, position[start:start + count]
