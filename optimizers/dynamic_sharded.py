"""`ShardedDynamicEmbedding`: a `DynamicEmbedding` split over the workers by the hash of each key.

Under `MultiWorkerMirroredStrategy` with N workers (one replica each), worker
`owner_of(key) = SplitMix64(key) >> 33 mod N` owns a key: its row, its
optimizer slots and the admission and eviction state that concerns it. Each
worker holds a `DynamicEmbedding` of `ceil(capacity / N)` rows for its own
keys, in plain per-process variables. A lookup sends each owner the distinct
keys this replica asks of it, with their counts, through the all-to-all of
`optimizers/all_to_all.py`; the owner runs the policy on the keys it
received (in replica order, so in the global batch's first-occurrence order
of its keys, with their global counts), gathers their rows and sends them
back; the gradient returns along the same path, so each owner's table gets
`tf.IndexedSlices` of its own rows and the optimizer applies them without
an all-reduce. Per replica and step that moves
`(N - 1) x width x (16 + 4 x output_dim)` bytes each way, `width` the most
distinct keys a replica sends one owner: bounded by the local batch, flat
in N.

So the N workers together hold what N tables of `ceil(capacity / N)` rows
each, fed the global batch's keys of their owner, would: the policy is
`DynamicEmbedding`'s, per owner (LRU and LFU compete among an owner's keys).
New rows draw their initial values with the seed `shard_seed(seed, owner)`.
Only `default="zeros"`: a shared default row would be a replicated variable
that every owner's default lookups update.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from optimizers.all_to_all import AllToAll, ByteCounter
from optimizers.dynamic import DynamicEmbedding
from optimizers.dynamic_ops import gather_resident, owner_of
from optimizers.dynamic_policy import policy_step
from optimizers.sharded import SHARD_ATTRIBUTE, ShardSpec, _worker_device, local_variables, replica_layout


def shard_seed(seed: int, shard: int) -> int:
    """The row initializer's seed on worker `shard`: distinct per owner, so owners' new rows differ."""
    return (int(seed) * 1_000_003 + int(shard)) % 2**31


@keras.saving.register_keras_serializable(package="embedopt")
class ShardedDynamicEmbedding(DynamicEmbedding):
    """A `DynamicEmbedding` of `capacity` rows in all, split over the workers by key hash; see the module docstring.

    Args:
        output_dim, capacity, admit_after, eviction, embeddings_initializer,
            init_scale, sketch_depth, sketch_width, seed, sketch_decay_every:
            as `DynamicEmbedding`'s; each of N workers holds `ceil(capacity /
            N)` rows, a `sketch_depth x sketch_width` sketch and the LRU log
            of its own keys.
        default: `"zeros"` only.

    Build it inside `strategy.scope()` of a `MultiWorkerMirroredStrategy`
    (one replica per process). With N = 1 it is a `DynamicEmbedding`.

    Example:
        >>> with strategy.scope():   # N workers
        ...     emb = optimizers.ShardedDynamicEmbedding(32, capacity=10_000_000, admit_after=2)
        ...     emb.build()          # each worker: 10M / N rows of its own keys
        >>> strategy.run(lambda keys: emb(keys, training=True), args=(keys,))
    """

    def __init__(self, output_dim, capacity, default="zeros", **kwargs):
        if default != "zeros":
            raise ValueError(f"ShardedDynamicEmbedding: `default` must be 'zeros' (a shared default row would be "
                             f"replicated over the owners), got {default!r}")
        super().__init__(output_dim, capacity, default=default, **kwargs)
        self.total_capacity = self.capacity
        self.base_seed = self.seed
        self.spec: ShardSpec | None = None
        self._all_to_all = None

    def build(self, input_shape=None):
        strategy = tf.distribute.get_strategy()
        n, r = replica_layout(strategy)
        self.spec = ShardSpec(n, r, self.total_capacity)
        self.capacity = math.ceil(self.total_capacity / n)
        self.seed = shard_seed(self.base_seed, r) if n > 1 else self.base_seed
        device = _worker_device(strategy)
        with local_variables(device):
            super().build(input_shape)
        setattr(self.embeddings.value, SHARD_ATTRIBUTE, self.spec)
        self._counter = ByteCounter(device)
        if n > 1:  # built here, in layer build order, so its collective keys agree on every worker
            self._all_to_all = AllToAll(strategy, counter=self._counter)

    @property
    def bytes_sent(self) -> int:
        """Bytes this worker has sent through the exchange since the build, forward and backward."""
        return self._counter.value()

    def call(self, keys, training=None):
        if self._all_to_all is None:
            return super().call(keys, training)
        if not keys.dtype.is_integer:
            raise TypeError(f"ShardedDynamicEmbedding {self.name!r}: keys must be integers, got {keys.dtype.name}")
        keys = tf.cast(keys, tf.int64)
        n = self.spec.num_shards
        unique, position, counts = tf.unique_with_counts(tf.reshape(keys, [-1]), out_idx=tf.int64)
        owners = owner_of(unique, n)
        order = tf.cast(tf.argsort(owners, stable=True), tf.int64)
        per_owner = tf.math.bincount(owners, minlength=n, maxlength=n, dtype=tf.int64)
        asked = self._all_to_all(tf.stack([tf.gather(unique, order), tf.gather(counts, order)], axis=1), per_owner)
        # The keys this worker owns, from every replica in replica order: their first-occurrence order.
        mine, where = tf.unique(asked.values[:, 0], out_idx=tf.int64)
        if training:
            total = tf.math.unsorted_segment_sum(asked.values[:, 1], where, tf.size(mine, out_type=tf.int64))
            rows = self._owner_policy(mine, total)
        else:
            rows = tf.reshape(self.key_to_row.lookup(mine), [-1])
        table = self.embeddings.value
        served = self._all_to_all(gather_resident(table, tf.zeros([1, self.output_dim], table.dtype), rows, where),
                                  asked.counts)
        # served.values comes in the order the keys were sent: undo the sort, then expand to the batch.
        vectors = tf.scatter_nd(order[:, None], served.values, tf.shape(served.values, out_type=tf.int64))
        out = tf.gather(vectors, position)
        out = tf.reshape(out, tf.concat([tf.shape(keys), [self.output_dim]], axis=0))
        return tf.cast(out, self.compute_dtype)

    def _owner_policy(self, keys, counts):
        """The policy step on this owner's keys: in a `merge_call`, where the policy writes its (local) state."""
        context = tf.distribute.get_replica_context()
        if context is None:
            return policy_step(self, keys, counts)
        return context.merge_call(lambda strategy, k, c: policy_step(
            self, strategy.experimental_local_results(k)[0], strategy.experimental_local_results(c)[0]),
            args=(keys, counts))

    def get_config(self):
        config = super().get_config()
        config.update(capacity=self.total_capacity, seed=self.base_seed)
        return config
