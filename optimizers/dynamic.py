"""`DynamicEmbedding`: a fixed-capacity table keyed by raw int64 keys, with admission and eviction.

Each admitted key owns one row of a `[capacity, output_dim]` variable (no
collisions while the keys fit); a TensorFlow `MutableHashTable` maps key to
row. The lookup gathers the batch's rows from the variable, so the gradient
is `tf.IndexedSlices` on the row table and every embedopt optimizer, with its
slots, applies it unchanged. docs/dynamic_tables.md describes the policies.

One training call (`training=True`), for the batch's distinct keys in order
of first occurrence:

1. resident keys refresh their row's last-seen step (LRU) or add their
   occurrences to their row's count (LFU);
2. other keys add their occurrences to a count-min sketch; those whose
   estimate reaches `admit_after` are admitted, in first-occurrence order;
3. an admitted key takes a never-used row (rows are handed out 0, 1, 2, ...)
   or, when none is left, the row of the least recently used (LRU: smallest
   last-seen step) or least frequently used (LFU: smallest count) key that
   this batch does not read, ties to the lower row; keys that find no row
   stay unadmitted;
4. a (re)assigned row is re-initialized, and recorded so that
   `reset_slots(optimizer)` can reset its optimizer slots.

Outside training the layer only reads: unknown keys get the default.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from optimizers.distributed import local_variable

EVICTIONS = ("lru", "lfu")
DEFAULTS = ("zeros", "shared_row")
INITIALIZERS = ("uniform", "zeros")
_INT64_MAX = np.iinfo(np.int64).max
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB


def sketch_buckets(keys: tf.Tensor, depth: int, width: int) -> tf.Tensor:
    """int64 `[depth, n]`: the count-min sketch column of each key in each of `depth` rows.

    Row `d` hashes `key + (d + 1) * golden` with SplitMix64's finalizer (wrapping
    uint64 arithmetic) and keeps the low bits (`width` is a power of two).
    """
    keys = tf.cast(keys, tf.int64)
    # Constants go in as NumPy uint64: inside tf.function a Python int above 2**63 is rounded through float64.
    z = tf.bitcast(keys, tf.uint64)[None, :]
    z = z + tf.constant(np.array([(d + 1) * _GOLDEN % 2**64 for d in range(depth)], np.uint64))[:, None]
    z = (z ^ tf.bitwise.right_shift(z, tf.constant(30, tf.uint64))) * tf.constant(np.uint64(_MIX1))
    z = (z ^ tf.bitwise.right_shift(z, tf.constant(27, tf.uint64))) * tf.constant(np.uint64(_MIX2))
    z = z ^ tf.bitwise.right_shift(z, tf.constant(31, tf.uint64))
    return tf.cast(z & tf.constant(np.uint64(width - 1)), tf.int64)


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

    State (all in variables and one hash table, saved by `tf.train.Checkpoint`
    and by `.keras` files): `embeddings` `[capacity, output_dim]` (trainable),
    `default_row` `[1, output_dim]` (trainable, shared_row only), `row_keys`,
    `last_seen` (LRU) or `row_counts` (LFU) `[capacity]` int64, the count-min
    `sketch` `[sketch_depth, sketch_width]` int64 (only when `admit_after > 1`),
    and the counters `admissions`, `evictions`, `default_lookups`, `lookups`,
    `rows_in_use`, `steps`.

    Memory: `capacity * output_dim * 4 * (1 + optimizer slots per element)`
    bytes + `capacity * 16` (keys and LRU/LFU stamp) + the hash table
    (about `capacity * 40`) + `sketch_depth * sketch_width * 8`.

    Count-min sketch: an estimate never falls below the true count of a
    key's occurrences while it was not resident, and exceeds it by more than
    `e * N / sketch_width` with probability at most `exp(-sketch_depth)`,
    where N is the total of all such counts so far. A key may therefore be
    admitted early, never late.

    Slots: when a row is given to a new key, call `reset_slots(optimizer)`
    after the forward pass and before `optimizer.apply_gradients` (every
    training step; `train_step_with_reset` shows the order): it sets that
    step's (re)assigned rows of every slot of `embeddings` back to the slot's
    initial value, so the new key starts like a fresh row.

    Cost per step: a `tf.unique` of the batch, a hash lookup, O(batch) sketch
    and scatter work, plus, on a step that evicts, one `top_k` over the
    `capacity` stamps (O(capacity)); steps that admit nothing or still have
    never-used rows do no O(capacity) work.

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
        seed: seed of the row initializer.

    Example:
        >>> emb = optimizers.DynamicEmbedding(16, capacity=100_000, admit_after=2)
        >>> vectors = emb(tf.constant([[2**63 - 1, -5]], tf.int64), training=True)  # (1, 2, 16)
    """

    def __init__(self, output_dim, capacity, admit_after=1, eviction="lru", default="zeros",
                 embeddings_initializer="uniform", init_scale=0.05, sketch_depth=4, sketch_width=2**16, seed=0,
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
        self.assigned_rows = state("assigned_rows", (self.capacity,))
        self.num_assigned = state("num_assigned", ())
        self.rows_in_use = state("rows_in_use", ())
        self.steps = state("steps", ())
        self.admissions = state("admissions", ())
        self.evictions = state("evictions", ())
        self.default_lookups = state("default_lookups", ())
        self.lookups = state("lookups", ())
        with tf.init_scope():  # Keras may build while tracing `call`
            self.key_to_row = tf.lookup.experimental.MutableHashTable(tf.int64, tf.int64, default_value=-1,
                                                                      name=f"{self.name}_key_to_row")
        self.built = True

    def counters(self) -> dict:
        """Python ints: rows in use, admissions, evictions, default lookups, lookups, steps."""
        names = ("rows_in_use", "admissions", "evictions", "default_lookups", "lookups", "steps")
        return {name: int(getattr(self, name).numpy()) for name in names}

    def rebuild_index(self):
        """Refills the key -> row hash table from `row_keys` and `rows_in_use` (after `.keras` loading)."""
        keys, _ = self.key_to_row.export()
        self.key_to_row.remove(keys)
        used = self.rows_in_use.value
        self.key_to_row.insert(self.row_keys.value[:used], tf.range(used, dtype=tf.int64))

    def load_own_variables(self, store):
        super().load_own_variables(store)
        self.rebuild_index()

    # -- forward ------------------------------------------------------------

    def call(self, keys, training=None):
        if not keys.dtype.is_integer:
            raise TypeError(f"DynamicEmbedding {self.name!r}: keys must be integers, got {keys.dtype.name}")
        keys = tf.cast(keys, tf.int64)
        flat = tf.reshape(keys, [-1])
        unique, position = tf.unique(flat)
        rows = tf.reshape(self.key_to_row.lookup(unique), [-1])
        if training:
            rows = self._admit(unique, position, rows, tf.size(flat, out_type=tf.int64))
        hit = rows >= 0
        # Entry 0 is the default; entry i > 0 the i-th resident distinct key's row. Gathering only the
        # resident rows keeps the gradient off every other row, and one gather per distinct key makes
        # the gradient arrive with its indices already distinct.
        slot = tf.where(hit, tf.cumsum(tf.cast(hit, tf.int32)), 0)
        table = local_variable(self.embeddings.value)
        default = (tf.zeros([1, self.output_dim], table.dtype) if self.default_row is None
                   else local_variable(self.default_row.value))
        entries = tf.concat([default, tf.gather(table, tf.boolean_mask(rows, hit))], axis=0)
        out = tf.gather(entries, tf.gather(slot, position))
        out = tf.reshape(out, tf.concat([tf.shape(keys), [self.output_dim]], axis=0))
        return tf.cast(out, self.compute_dtype)

    def _admit(self, unique, position, rows, num_lookups):
        """Updates the policy state for one training batch; returns the rows of `unique` afterwards."""
        counts = tf.math.unsorted_segment_sum(tf.ones_like(position, tf.int64), position, tf.size(unique))
        step = self.steps.assign_add(1)
        resident = rows >= 0
        resident_rows = tf.boolean_mask(rows, resident)
        if self.eviction == "lru":
            self.row_stamps.value.scatter_update(
                tf.IndexedSlices(tf.fill(tf.shape(resident_rows), step), resident_rows))
        else:
            self.row_stamps.value.scatter_add(tf.IndexedSlices(tf.boolean_mask(counts, resident), resident_rows))

        candidate_at = tf.where(tf.logical_not(resident))[:, 0]
        candidate_keys = tf.gather(unique, candidate_at)
        candidate_counts = tf.gather(counts, candidate_at)
        if self.sketch is not None:
            buckets = sketch_buckets(candidate_keys, self.sketch_depth, self.sketch_width)
            depth = tf.broadcast_to(tf.range(self.sketch_depth, dtype=tf.int64)[:, None], tf.shape(buckets))
            cells = tf.reshape(tf.stack([depth, buckets], axis=-1), [-1, 2])
            self.sketch.value.scatter_nd_add(
                cells, tf.reshape(tf.broadcast_to(candidate_counts[None, :], tf.shape(buckets)), [-1]))
            estimate = tf.reduce_min(tf.reshape(tf.gather_nd(self.sketch.value, cells), tf.shape(buckets)), axis=0)
            admit = estimate >= self.admit_after
            candidate_at = tf.boolean_mask(candidate_at, admit)
            candidate_keys = tf.boolean_mask(candidate_keys, admit)
            candidate_counts = tf.boolean_mask(candidate_counts, admit)

        used = self.rows_in_use.value
        free = self.capacity - used
        evictable = used - tf.size(resident_rows, out_type=tf.int64)
        num_admit = tf.minimum(tf.size(candidate_keys, out_type=tf.int64), free + evictable)
        num_fresh = tf.minimum(num_admit, free)
        num_evict = num_admit - num_fresh
        new_at = candidate_at[:num_admit]
        new_keys = candidate_keys[:num_admit]
        victims = tf.cond(num_evict > 0, lambda: self._victims(num_evict, used, resident_rows),
                          lambda: tf.zeros([0], tf.int64))
        self.key_to_row.remove(tf.gather(self.row_keys.value, victims))
        new_rows = tf.concat([tf.range(used, used + num_fresh), victims], axis=0)
        self.key_to_row.insert(new_keys, new_rows)
        self.row_keys.value.scatter_update(tf.IndexedSlices(new_keys, new_rows))
        stamps = tf.fill(tf.shape(new_rows), step) if self.eviction == "lru" else candidate_counts[:num_admit]
        self.row_stamps.value.scatter_update(tf.IndexedSlices(stamps, new_rows))
        self.embeddings.value.scatter_update(tf.IndexedSlices(self._initial_rows(tf.size(new_rows), step), new_rows))
        self.assigned_rows.value.scatter_update(tf.IndexedSlices(new_rows, tf.range(num_admit)))
        self.num_assigned.assign(num_admit)
        self.rows_in_use.assign_add(num_fresh)
        self.admissions.assign_add(num_admit)
        self.evictions.assign_add(num_evict)
        rows = tf.tensor_scatter_nd_update(rows, new_at[:, None], new_rows)
        self.lookups.assign_add(num_lookups)
        self.default_lookups.assign_add(tf.reduce_sum(tf.where(rows < 0, counts, 0)))
        return rows

    def _victims(self, num_evict, used, protected_rows):
        """The `num_evict` rows in use, not read by this batch, with the smallest stamps (ties: lower row)."""
        stamps = tf.where(tf.range(self.capacity, dtype=tf.int64) < used, self.row_stamps.value, _INT64_MAX)
        stamps = tf.tensor_scatter_nd_update(stamps, protected_rows[:, None],
                                             tf.fill(tf.shape(protected_rows), tf.constant(_INT64_MAX, tf.int64)))
        _, victims = tf.math.top_k(-stamps, k=tf.cast(num_evict, tf.int32), sorted=True)
        return tf.cast(victims, tf.int64)

    def _initial_rows(self, n, step):
        dtype = self.embeddings.dtype
        if self.embeddings_initializer == "zeros" or self.init_scale == 0:
            return tf.zeros([n, self.output_dim], dtype)
        seed = tf.stack([tf.constant(self.seed, tf.int64), step])
        return tf.random.stateless_uniform([n, self.output_dim], seed=seed, minval=-self.init_scale,
                                           maxval=self.init_scale, dtype=dtype)

    # -- optimizer slots ----------------------------------------------------

    def reset_slots(self, optimizer):
        """Sets every slot of `embeddings` back to its initial value on the rows the last training call assigned.

        Call it after the forward pass and before `optimizer.apply_gradients`. A
        no-op until the optimizer is built (its slots then start at their
        initial values anyway). Needs an embedopt optimizer (`SparseOptimizer`).
        """
        from optimizers.base import SparseOptimizer

        if not isinstance(optimizer, SparseOptimizer):
            raise TypeError(f"DynamicEmbedding.reset_slots needs an embedopt optimizer, got {type(optimizer).__name__}")
        if not optimizer.built:
            return
        rows = self.assigned_rows.value[:self.num_assigned.value]
        for name in optimizer.slot_names:
            slot = optimizer.get_slot(self.embeddings, name)
            tail = tuple(slot.shape[1:])
            initial = keras.initializers.get(optimizer._slot_initializer(name))(shape=(1, *tail), dtype=slot.dtype)
            values = tf.broadcast_to(tf.reshape(initial, (1, *tail)), tf.concat([tf.shape(rows), tail], axis=0))
            local_variable(slot.value).scatter_update(tf.IndexedSlices(values, rows))

    # -- Keras --------------------------------------------------------------

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.output_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(output_dim=self.output_dim, capacity=self.capacity, admit_after=self.admit_after,
                      eviction=self.eviction, default=self.default,
                      embeddings_initializer=self.embeddings_initializer, init_scale=self.init_scale,
                      sketch_depth=self.sketch_depth, sketch_width=self.sketch_width, seed=self.seed)
        return config


def train_step_with_reset(model, optimizer, loss_fn, inputs, targets, tables):
    """One training step in the order `DynamicEmbedding` needs: forward, reset slots, apply.

    Args:
        model: a callable Keras model or layer.
        optimizer: an embedopt optimizer.
        loss_fn: `loss_fn(targets, predictions)` -> scalar.
        inputs, targets: one batch.
        tables: the `DynamicEmbedding` layers of `model`.

    Returns:
        The loss.
    """
    with tf.GradientTape() as tape:
        loss = loss_fn(targets, model(inputs, training=True))
    variables = model.trainable_variables
    grads = tape.gradient(loss, variables)
    for table in tables:
        table.reset_slots(optimizer)
    optimizer.apply_gradients(zip(grads, variables))
    return loss
