"""The LRU eviction order of `DynamicEmbedding` without a scan of the table: a log of (row, step) entries.

The LRU policy evicts the rows with the smallest last-seen step, ties to the
lower row. Every step stamps the rows it reads or assigns with its step, so
appending those rows, sorted, to a log after each step keeps the log in
(step, row) order. An entry `(r, s)` is live while `last_seen[r] == s`: once
row r is read again, or given to another key, its stamp moves on and the
entry is dead for good. The live entries, from the head, are therefore the
rows in exact LRU order, and the victims are the first live entries from the
head; the dead entries before them are dropped as the head passes.

Costs: the log is a ring of `2 * capacity` entries (16 bytes each). A step
appends at most one entry per row it read or assigned, so O(batch); victim
selection reads entries from the head, each entry at most once over the run,
so O(batch) amortized. When an append would overrun the ring, the log is
compacted to its live entries (at most `capacity - appended`), which is
O(capacity) once per at least `capacity` appended entries: O(1) amortized
per entry. While the table still has never-used rows no eviction can
happen and no log is kept; the step that first needs a victim builds it once
from the stamps (one sort of the rows in use).

Where the embedopt kernels serve the layer, `EmbedoptDynamicPolicy` does the
same on the same variables, in place, within its one op for the whole step
(`optimizers/kernels/cc/lru_log.h`), giving the same entries, head and tail
(tests/optimizers/test_dynamic_paths.py).
"""

from __future__ import annotations

import tensorflow as tf

from optimizers.dynamic_ops import write_all

_MIN_CHUNK = 4096


def _scatter(variable, positions, values):
    write_all(variable.value, lambda v: v.scatter_update(tf.IndexedSlices(values, positions)))


def _assign(variable, value):
    write_all(variable.value, lambda v: v.assign(value))


class LruLog(tf.Module):
    """The log's variables, created through `add_state(name, shape)`, and its three operations.

    A `tf.Module`, so that `tf.train.Checkpoint` of the layer holding it saves its variables.
    """

    def __init__(self, capacity: int, add_state):
        super().__init__(name="lru_log")
        self.size = 2 * capacity
        self.rows = add_state("lru_log_rows", (self.size,))
        self.steps = add_state("lru_log_steps", (self.size,))
        self.head = add_state("lru_log_head", ())  # positions count up; the ring index is position % size
        self.tail = add_state("lru_log_tail", ())

    def live(self) -> tf.Tensor:
        """Whether the log is kept (from the first step that needed a victim on)."""
        return self.tail.value > 0

    def victims(self, stamps, num_evict, step, used) -> tf.Tensor:
        """The `num_evict` least recently used rows, not stamped with `step`, in LRU order; consumes them."""
        tf.cond(self.live(), lambda: tf.constant(0, tf.int64), lambda: self._build(stamps, step, used))
        head = tf.identity(self.head.value)
        tail = tf.identity(self.tail.value)
        chunk = tf.maximum(2 * num_evict, _MIN_CHUNK)

        def body(head, need, found):
            n = tf.minimum(chunk, tail - head)
            at = (head + tf.range(n)) % self.size
            rows = tf.gather(self.rows.value, at)
            valid = tf.gather(stamps.value, rows) == tf.gather(self.steps.value, at)
            take = tf.logical_and(valid, tf.cumsum(tf.cast(valid, tf.int64)) <= need)
            got = tf.boolean_mask(rows, take)
            taken = tf.size(got, out_type=tf.int64)
            after_last = tf.reduce_max(tf.where(take, tf.range(1, n + 1), 0))
            return head + tf.where(taken == need, after_last, n), need - taken, tf.concat([found, got], 0)

        head, need, found = tf.while_loop(
            lambda head, need, found: tf.logical_and(need > 0, head < tail), body,
            (head, num_evict, tf.zeros([0], tf.int64)),
            shape_invariants=(head.shape, num_evict.shape, tf.TensorShape([None])))
        check = tf.debugging.assert_equal(need, tf.constant(0, tf.int64),
                                          message="DynamicEmbedding: the LRU log holds fewer live rows than needed")
        with tf.control_dependencies([check]):
            _assign(self.head, head)
            return tf.identity(found)

    def append(self, stamps, rows, step):
        """Logs `rows` (distinct, all stamped `step` this step) in ascending order, once the log is kept."""
        def append():
            tail = tf.identity(self.tail.value)
            head = tf.identity(self.head.value)
            added = tf.size(rows, out_type=tf.int64)
            start = tf.cond(tail - head + added > self.size, lambda: self._compact(stamps, head, tail),
                            lambda: tail)
            at = (start + tf.range(added)) % self.size
            _scatter(self.rows, at, tf.sort(rows))
            _scatter(self.steps, at, tf.fill([added], step))
            _assign(self.tail, start + added)
            return added

        tf.cond(self.live(), append, lambda: tf.constant(0, tf.int64))

    def _build(self, stamps, step, used):
        """Logs the rows in use not stamped `step` in (stamp, row) order (one sort, once per run); returns how many."""
        in_use = stamps.value[:used]
        order = tf.argsort(in_use, stable=True)
        keep = tf.gather(in_use, order) < step
        rows = tf.boolean_mask(tf.cast(order, tf.int64), keep)
        count = tf.size(rows, out_type=tf.int64)
        _scatter(self.rows, tf.range(count), rows)
        _scatter(self.steps, tf.range(count), tf.gather(in_use, rows))
        _assign(self.head, tf.constant(0, tf.int64))
        _assign(self.tail, count)
        return count

    def _compact(self, stamps, head, tail):
        """Moves the live entries, in order, to positions 0, 1, ...; returns the new tail."""
        at = (head + tf.range(tail - head)) % self.size
        rows = tf.gather(self.rows.value, at)
        steps = tf.gather(self.steps.value, at)
        valid = tf.gather(stamps.value, rows) == steps
        rows, steps = tf.boolean_mask(rows, valid), tf.boolean_mask(steps, valid)
        count = tf.size(rows, out_type=tf.int64)
        _scatter(self.rows, tf.range(count), rows)
        _scatter(self.steps, tf.range(count), steps)
        _assign(self.head, tf.constant(0, tf.int64))
        return count
