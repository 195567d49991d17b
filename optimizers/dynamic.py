"""`DynamicEmbedding`: a fixed-capacity table keyed by raw int64 keys, with admission and eviction.

Each admitted key owns one row of a `[capacity, output_dim]` variable (no
collisions while the keys fit). `row_keys[:rows_in_use]` holds the map;
where the embedopt kernels run, a native hash index serves it (one op for a
batch's distinct keys and rows, one for a step's evictions and admissions),
else TensorFlow's `MutableHashTable` (`optimizers/dynamic_index.py`). The
lookup gathers the batch's rows from the variable, so the gradient
is `tf.IndexedSlices` on the row table and every embedopt optimizer, with its
slots, applies it unchanged. docs/dynamic_tables.md describes the policies.

One training call (`training=True`), for the batch's distinct keys in order
of first occurrence:

1. resident keys refresh their row's last-seen step (LRU), or add their
   occurrences to their row's count and refresh its last-seen step (LFU);
2. other keys add their occurrences to a count-min sketch; those whose
   estimate reaches `admit_after` are admitted, in first-occurrence order;
3. an admitted key takes a never-used row (rows are handed out 0, 1, 2, ...)
   or, when none is left, the row of the least recently used (LRU: smallest
   last-seen step) or least frequently used (LFU: smallest count, ties to the
   smallest last-seen step) key that this batch does not read, ties to the
   lower row; keys that find no row stay unadmitted. A (re)assigned row's
   last-seen step is this step, and under LFU its count the key's
   occurrences in this batch;
4. a (re)assigned row is re-initialized, and recorded so that
   `reset_slots(optimizer)` can reset its optimizer slots.

Under a `tf.distribute` strategy the policy runs once per step, in a
`merge_call`, on the global batch's keys (the replicas' distinct keys in
replica order), and writes every replica's copy of the state: replicas
admit the same keys in the same order, to the same rows, as one replica on
the global batch. Across the workers of a MultiWorkerMirroredStrategy the
replicas all-gather their distinct keys first and every worker runs the
same policy on them, so each worker holds the same whole table (data
parallel; `optimizers.ShardedDynamicEmbedding` instead splits a table over
the workers by key hash). Outside training the layer only reads: unknown keys get
the default. `optimizers/dynamic_policy.py` runs the policy step,
`optimizers/dynamic_lru.py` keeps the LRU order without a scan of the table,
`optimizers/dynamic_index.py` keeps the two indexes in step with the
variables, and `optimizers/dynamic_ops.py` holds the tensor functions.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from optimizers import fast_path
from optimizers.distributed import local_variable
from optimizers.dynamic_index import KeyToRow, NativeIndex
from optimizers.dynamic_lru import LruLog
from optimizers.dynamic_ops import (gather_resident, gather_worker_keys, merge_replica_keys, pooled_resident,
                                    spans_workers)
from optimizers.dynamic_policy import policy_step
from optimizers.dynamic_training import train_step_with_reset  # noqa: F401  re-exported: part of this module's API

EVICTIONS = ("lru", "lfu")
DEFAULTS = ("zeros", "shared_row")
INITIALIZERS = ("uniform", "zeros")


def _positive_int(name, value, low=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"DynamicEmbedding: `{name}` must be an integer >= {low}, got {value!r}")
    return int(value)


@keras.saving.register_keras_serializable(package="embedopt")
class DynamicEmbedding(keras.layers.Layer):
    """Embedding of raw int64 keys in a fixed-capacity table with admission and eviction.

    Input: int64 keys of any shape, any 64-bit value (int32 is widened).
    Output: that shape + `(output_dim,)`. A key owns a row once admitted;
    until then, or after its row was taken by another key, it reads the
    default: zeros, or one shared trainable row (`default="shared_row"`),
    and its gradient reaches no key row.

    State (in variables and the `MutableHashTable`, whose saved content is
    read from `row_keys`; saved by `tf.train.Checkpoint` and by `.keras`
    files; the native index is rebuilt from `row_keys` when needed): `embeddings` `[capacity, output_dim]` (trainable),
    `default_row` `[1, output_dim]` (trainable, shared_row only), `row_keys`,
    `last_seen` (LRU) or `row_counts` and `last_seen` (LFU) `[capacity]` int64, the count-min
    `sketch` `[sketch_depth, sketch_width]` int64 (only when `admit_after > 1`),
    the LRU eviction log (`lru_log_rows`, `lru_log_steps` `[2 * capacity]`,
    `lru_log_head`, `lru_log_tail`; LRU only), and the counters `admissions`,
    `evictions`, `default_lookups`, `lookups`, `rows_in_use`, `steps`.
    An LFU checkpoint or `.keras` file written before LFU kept `last_seen`
    restores with `last_seen` 0: rows not read since tie by row, as before.

    Memory: `capacity * output_dim * 4 * (1 + optimizer slots per element)`
    bytes + `capacity * 24` (keys, LRU/LFU stamp, assigned rows) + the key
    index (native: 32 to 64 bytes per row; `MutableHashTable`: about
    `capacity * 40`, empty on the kernel path) + `sketch_depth * sketch_width * 8` + for
    LRU the eviction log, `capacity * 32`; for LFU `last_seen`, `capacity * 8`,
    and on the kernel path its buckets, 8 bytes an entry, at most
    `2 * capacity` + a step's rows entries.

    Count-min sketch: an estimate never falls below the true count of a
    key's occurrences while it was not resident, and exceeds it by more than
    `e * N / sketch_width` with probability at most `exp(-sketch_depth)`,
    where N is the total of all such counts so far. A key may therefore be
    admitted early, never late. With `sketch_decay_every=K` every counter is
    halved (rounded down) at the start of every K-th training step, before
    that step's counts are added, so old sightings fade: a key must then be
    seen `admit_after` times within a few K steps, and N stays bounded. The
    bounds above then hold for the halved counts. The halving costs
    `sketch_depth * sketch_width` once per K steps, independent of capacity.

    Slots: when a row is given to a new key, call `reset_slots(optimizer)`
    after the forward pass and before `optimizer.apply_gradients` (every
    training step; `train_step_with_reset` shows the order): it sets that
    step's (re)assigned rows of every slot of `embeddings` back to the slot's
    initial value, so the new key starts like a fresh row.

    Cost per step: one unique + lookup of the batch's keys (one kernel, or
    `tf.unique` and a hash lookup), O(batch) sketch and scatter work, an
    insert of the admitted and a remove of the evicted keys. LRU victims come from the eviction log
    (`optimizers/dynamic_lru.py`): O(batch) amortized, with one O(capacity)
    compaction per at least `capacity` logged reads and one sort of the rows
    when the table first fills. LFU victims, on the kernel path, come from
    buckets of rows by count (`lfu_buckets.h`), each in (last-seen step,
    row) order: O(batch) amortized, with one O(capacity) compaction per at
    least `capacity` appended entries and one sort of the rows in use after a
    restore or a step of the TF path; the TF path takes one `top_k` over
    all rows (O(capacity)) on each step that evicts. On the kernel
    path (one replica, float32) the whole policy step is one kernel
    (`EmbedoptDynamicPolicy`, bit-identical to the TF ops), and the lookup
    and its gradient are `EmbedoptResidentLookup`'s kernels, which reuse the
    unique op's grouping of the batch (`shared_row` keeps
    `gather_resident`). Replicated steps take the TF-ops path.

    Args:
        output_dim: embedding width, > 0.
        capacity: number of rows, > 0.
        admit_after: occurrences needed before a key gets a row (1: at once).
        eviction: `"lru"` or `"lfu"`.
        default: `"zeros"` or `"shared_row"`.
        embeddings_initializer: `"uniform"` (U(-init_scale, init_scale),
            drawn per admission from a stateless RNG seeded by `(seed, step)`,
            so replicas and restarts agree) or `"zeros"`.
        init_scale: half-width of the uniform initializer.
        sketch_depth, sketch_width: count-min sketch shape (width a power of 2).
        sketch_decay_every: halve the sketch every this many training steps
            (0: never; no effect when `admit_after` is 1: there is no sketch).
        seed: seed of the row initializer.

    Example:
        >>> emb = optimizers.DynamicEmbedding(16, capacity=100_000, admit_after=2)
        >>> vectors = emb(tf.constant([[2**63 - 1, -5]], tf.int64), training=True)  # (1, 2, 16)
    """

    def __init__(self, output_dim, capacity, admit_after=1, eviction="lru", default="zeros",
                 embeddings_initializer="uniform", init_scale=0.05, sketch_depth=4, sketch_width=2**16, seed=0,
                 sketch_decay_every=0,
                 **kwargs):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        self.output_dim = _positive_int("output_dim", output_dim)
        self.capacity = _positive_int("capacity", capacity)
        self.admit_after = _positive_int("admit_after", admit_after)
        self.sketch_depth = _positive_int("sketch_depth", sketch_depth)
        self.sketch_width = _positive_int("sketch_width", sketch_width)
        if self.sketch_width & (self.sketch_width - 1):
            raise ValueError(f"DynamicEmbedding: `sketch_width` must be a power of 2, got {sketch_width!r}")
        for name, value, allowed in (("eviction", eviction, EVICTIONS), ("default", default, DEFAULTS),
                                     ("embeddings_initializer", embeddings_initializer, INITIALIZERS)):
            if value not in allowed:
                raise ValueError(f"DynamicEmbedding: `{name}` must be one of {allowed}, got {value!r}")
        self.eviction = eviction
        self.default = default
        self.embeddings_initializer = embeddings_initializer
        self.init_scale = float(init_scale)
        if not self.init_scale >= 0:
            raise ValueError(f"DynamicEmbedding: `init_scale` must be >= 0, got {init_scale!r}")
        self.seed = int(seed)
        self.sketch_decay_every = _positive_int("sketch_decay_every", sketch_decay_every, low=0)

    # -- state --------------------------------------------------------------

    def build(self, input_shape=None):
        def state(name, shape, dtype="int64"):
            return self.add_weight(shape=shape, dtype=dtype, initializer="zeros", trainable=False, name=name)

        self.embeddings = self.add_weight(shape=(self.capacity, self.output_dim), initializer="zeros",
                                          name="embeddings", autocast=False)
        self.default_row = None
        if self.default == "shared_row":
            self.default_row = self.add_weight(shape=(1, self.output_dim), initializer="zeros", name="default_row",
                                               autocast=False)
        self.row_keys = state("row_keys", (self.capacity,))
        self.row_stamps = state("last_seen" if self.eviction == "lru" else "row_counts", (self.capacity,))
        self.sketch = state("sketch", (self.sketch_depth, self.sketch_width)) if self.admit_after > 1 else None
        self.lru_log = LruLog(self.capacity, state) if self.eviction == "lru" else None
        self.assigned_rows = state("assigned_rows", (self.capacity,))
        self.num_assigned = state("num_assigned", ())
        self.rows_in_use = state("rows_in_use", ())
        self.steps = state("steps", ())
        self.admissions = state("admissions", ())
        self.evictions = state("evictions", ())
        self.default_lookups = state("default_lookups", ())
        self.lookups = state("lookups", ())
        # LFU's tie order. Made last, so that `.keras` files written before it existed keep their variables' order.
        self.lfu_last_seen = state("last_seen", (self.capacity,)) if self.eviction == "lfu" else None
        with tf.init_scope():  # Keras may build while tracing `call`
            self.key_to_row = KeyToRow(self.row_keys, self.rows_in_use, name=f"{self.name}_key_to_row")
        if self.lfu_last_seen is not None:
            self.key_to_row.on_restore(self._zero_last_seen_unless_restored)
        self._native = None  # the kernels' index, made by the first step they serve
        self.built = True

    def counters(self) -> dict:
        """Python ints: rows in use, admissions, evictions, default lookups, lookups, steps."""
        names = ("rows_in_use", "admissions", "evictions", "default_lookups", "lookups", "steps")
        return {name: int(getattr(self, name).numpy()) for name in names}

    def rebuild_index(self):
        """Refills the key -> row indexes from `row_keys` and `rows_in_use` (after `.keras` loading)."""
        self.key_to_row.rebuild()
        if self._native is not None:
            self._native.reset()

    def _native_index(self):
        """The kernels' key -> row index when they serve this layer in the step being traced, else None.

        They do on one replica, where the kernels load (`optimizers.fast_path`);
        replicated steps keep the TF-ops path, which writes every replica's copy.
        """
        if tf.distribute.get_strategy().num_replicas_in_sync > 1 or not fast_path.use_kernels(self.embeddings):
            return None
        if self._native is None:
            self._native = NativeIndex(self.key_to_row, self.row_keys, self.rows_in_use, self.steps, self.name)
        return self._native

    def load_own_variables(self, store):
        if self.lfu_last_seen is not None and len(store.keys()) == len(self.weights) - 1:
            # An LFU table saved before `last_seen` existed (the last variable): its rows tie by row alone.
            store = {**{key: store[key] for key in store.keys()},
                     str(len(self.weights) - 1): np.zeros(self.capacity, np.int64)}
        super().load_own_variables(store)
        self.rebuild_index()

    def _zero_last_seen_unless_restored(self):
        """After a checkpoint restore: an LFU checkpoint written before `last_seen` existed sets it to 0."""
        # A restore stamps every object it holds a value for with its uid before it writes any value (and so
        # before the table calls this); a `last_seen` with an older stamp was not in the checkpoint. The stamp is
        # TensorFlow's private `_update_uid`: where a release lacks it, `last_seen` keeps its value.
        seen, table = (getattr(v, "_update_uid", None) for v in (self.lfu_last_seen, self.key_to_row))
        if seen is not None and table is not None and seen < table:
            self.lfu_last_seen.assign(tf.zeros_like(self.lfu_last_seen))

    # -- forward ------------------------------------------------------------

    def call(self, keys, training=None):
        if not keys.dtype.is_integer:
            raise TypeError(f"DynamicEmbedding {self.name!r}: keys must be integers, got {keys.dtype.name}")
        keys = tf.cast(keys, tf.int64)
        native = self._native_index()
        if native is not None:
            unique, position, counts, rows = native.unique(tf.reshape(keys, [-1]))
        else:
            unique, position, counts = tf.unique_with_counts(tf.reshape(keys, [-1]))
            counts, rows = tf.cast(counts, tf.int64), None
        if training:
            rows = self._policy_in_sync(unique, counts, rows)
        elif rows is None:
            rows = tf.reshape(self.key_to_row.lookup(unique), [-1])
        table = local_variable(self.embeddings.value)
        if native is not None and self.default_row is None:
            out = pooled_resident(table, rows, position)
        else:
            default = (tf.zeros([1, self.output_dim], table.dtype) if self.default_row is None
                       else local_variable(self.default_row.value))
            out = gather_resident(table, default, rows, position)
        out = tf.reshape(out, tf.concat([tf.shape(keys), [self.output_dim]], axis=0))
        return tf.cast(out, self.compute_dtype)

    def _policy_in_sync(self, unique, counts, rows=None):
        """Runs the policy once, on the global batch's keys, for all replicas; returns the rows of `unique`.

        `rows` are the rows of `unique` already looked up by the native index
        (one replica), or None: the policy looks them up in the hash table.

        In a replica context this is a `merge_call`: under a MirroredStrategy
        the replicas' distinct keys are merged in replica order (the global
        batch's order), the policy runs once in cross-replica context and
        writes every replica's copy of the state, so the replicas admit the
        same keys in the same order, to the same rows. Under a
        MultiWorkerMirroredStrategy over several workers the replicas first
        all-gather their distinct keys and counts (`gather_worker_keys`), and
        every worker runs the same policy on the same global keys, so every
        worker's copy of the table stays equal to one replica's on the global
        batch.
        """
        context = tf.distribute.get_replica_context()
        if context is None:  # cross-replica context already: one call serves all replicas
            return policy_step(self, unique, counts, rows, self._native if rows is not None else None)
        if spans_workers(context.strategy):  # replicated steps take the TF path: `rows` is None
            keys, total, mine = gather_worker_keys(context, unique, counts)
            return context.merge_call(self._merged_global_step, args=(keys, total, mine))
        return context.merge_call(self._merged_policy_step, args=(unique, counts, rows))

    def _merged_policy_step(self, strategy, unique, counts, rows):
        keys, total, parts = merge_replica_keys(strategy, unique, counts)
        if rows is not None:  # the native index's rows: one replica
            rows = strategy.experimental_local_results(rows)[0]
        rows = policy_step(self, keys, total, rows, self._native if rows is not None else None)
        return rows if len(parts) == 1 else self._per_replica(strategy, rows, parts)

    def _merged_global_step(self, strategy, keys, total, mine):
        # Every local replica gathered the same global keys: the policy runs once for this worker.
        rows = policy_step(self, strategy.experimental_local_results(keys)[0],
                           strategy.experimental_local_results(total)[0])
        return self._per_replica(strategy, rows, strategy.experimental_local_results(mine))

    @staticmethod
    def _per_replica(strategy, rows, parts):
        if len(parts) == 1:
            return tf.gather(rows, parts[0])
        per_replica = [tf.gather(rows, part) for part in parts]
        # Replica ids run over every worker; this worker's local replicas are its len(parts) consecutive ones.
        return strategy.experimental_distribute_values_from_function(
            lambda context: per_replica[context.replica_id_in_sync_group % len(parts)])

    # -- optimizer slots ----------------------------------------------------

    def reset_slots(self, optimizer):
        """Sets every slot of `embeddings` back to its initial value on the rows the last training call assigned.

        Call it after the forward pass and before `optimizer.apply_gradients`. A
        no-op until the optimizer is built (its slots then start at their
        initial values anyway). Needs an embedopt optimizer (`SparseOptimizer`).
        """
        from optimizers.base import SparseOptimizer
        from optimizers.kernels import ops

        if not isinstance(optimizer, SparseOptimizer):
            raise TypeError(f"DynamicEmbedding.reset_slots needs an embedopt optimizer, got {type(optimizer).__name__}")
        if not optimizer.built:
            return
        rows = self.assigned_rows.value[:self.num_assigned.value]
        filled = {}  # dtype -> (slots, values): reset in place, in one pass over the rows per dtype
        for name in optimizer.slot_names:
            slot = optimizer.get_slot(self.embeddings, name)
            tail = tuple(slot.shape[1:])
            init = keras.initializers.get(optimizer._slot_initializer(name))
            value = getattr(init, "value", 0) if isinstance(init, (keras.initializers.Zeros,
                                                                   keras.initializers.Constant)) else None
            target = local_variable(slot.value)
            if value is not None and np.ndim(value) == 0 and self._native_index() is not None:
                group = filled.setdefault(target.dtype, ([], []))
                group[0].append(target)
                group[1].append(value)
                continue
            initial = tf.reshape(init(shape=(1, *tail), dtype=slot.dtype), (1, *tail))
            values = tf.broadcast_to(initial, tf.concat([tf.shape(rows), tail], axis=0))
            target.scatter_update(tf.IndexedSlices(values, rows))
        for slots, values in filled.values():
            ops.fill_rows(slots, rows, values)  # no [rows, dim] block to build and scatter

    # -- Keras --------------------------------------------------------------

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.output_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(output_dim=self.output_dim, capacity=self.capacity, admit_after=self.admit_after,
                      eviction=self.eviction, default=self.default,
                      embeddings_initializer=self.embeddings_initializer, init_scale=self.init_scale,
                      sketch_depth=self.sketch_depth, sketch_width=self.sketch_width, seed=self.seed,
                      sketch_decay_every=self.sketch_decay_every)
        return config
