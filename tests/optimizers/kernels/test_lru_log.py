"""The LRU log kernels (EmbedoptLruVictims / EmbedoptLruAppend) against the log's TF ops, state for state."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from optimizers.dynamic_lru import LruLog


def _variable(value, name="stamps"):
    return keras.Variable(np.asarray(value, np.int64), dtype="int64", trainable=False, name=name)


def _log(capacity):
    return LruLog(capacity, lambda name, shape: _variable(np.zeros(shape), name))


def _state(log, stamps):
    return [v.numpy() for v in (log.rows, log.steps, log.head, log.tail, stamps)]


def test_victims_and_appends_match_the_tf_ops_through_builds_wraps_and_compactions(kernel_ops):
    # Capacity 8 (a ring of 16): a full table, up to 6 reads and 2 evictions a step, so the log is built on the
    # first eviction, wraps around the ring, and its dead entries pile up until it is compacted, many times.
    rng = np.random.default_rng(0)
    capacity = 8
    runs = {}
    for kernels in (True, False):
        stamps = _variable(np.arange(1, capacity + 1)[::-1])  # row 7 least recent
        log = _log(capacity)
        history, victims_seen = [], []
        for step in range(capacity + 1, capacity + 80):
            step_rng = np.random.default_rng(step)
            read = step_rng.choice(capacity, int(step_rng.integers(0, 7)), replace=False).astype(np.int64)
            stamps.value.scatter_update(tf.IndexedSlices(tf.fill([len(read)], tf.constant(step, tf.int64)), read))
            num_evict = tf.constant(min(int(step_rng.integers(0, 3)), capacity - len(read)), tf.int64)
            victims = log.victims(stamps, num_evict, tf.constant(step, tf.int64), tf.constant(capacity, tf.int64),
                                  kernels=kernels)
            stamps.value.scatter_update(tf.IndexedSlices(tf.fill(tf.shape(victims), tf.constant(step, tf.int64)),
                                                         victims))
            appended = tf.constant(rng.permutation(np.concatenate([read, victims.numpy()])).astype(np.int64))
            log.append(stamps, appended, tf.constant(step, tf.int64), kernels=kernels)
            victims_seen.append(victims.numpy().tolist())
            history.append(_state(log, stamps))
        runs[kernels] = (victims_seen, history)
    assert runs[True][0] == runs[False][0]
    for kernel_state, tf_state in zip(runs[True][1], runs[False][1]):
        for a, b in zip(kernel_state, tf_state):
            np.testing.assert_array_equal(a, b)
    tails = [int(state[3]) for state in runs[True][1]]
    assert max(tails) > 2 * capacity and any(b < a for a, b in zip(tails, tails[1:]))  # wrapped and compacted


def test_victims_refuse_when_the_log_is_short(kernel_ops):
    stamps = _variable([3, 3, 1, 2])
    log = _log(4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="fewer live rows than needed"):
        log.victims(stamps, tf.constant(3, tf.int64), tf.constant(3, tf.int64), tf.constant(4, tf.int64),
                    kernels=True)  # rows 0 and 1 were read this step: two candidates only
