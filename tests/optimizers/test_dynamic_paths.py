"""DynamicEmbedding's kernel path (native key index) and TF-ops path give the same state, and switching between
them, or restoring a checkpoint, never leaves either index out of date."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import tensorflow as tf

import optimizers
from optimizers import fast_path, kernels
from optimizers.dynamic import DynamicEmbedding
from tests.optimizers.dynamic_reference import ReferenceTable

pytestmark = pytest.mark.skipif(kernels.load() is None, reason="the kernel path needs the embedopt kernels")


def _stream(seed, steps, batch, universe, zipf=0.9):
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, len(universe) + 1) ** zipf
    p /= p.sum()
    keys = [rng.choice(universe, size=batch, p=p).astype(np.int64) for _ in range(steps)]
    return keys, [rng.normal(size=(batch, 3)).astype(np.float32) for _ in range(steps)]


def _make(**kwargs):
    layer = DynamicEmbedding(3, capacity=12, sketch_width=2**10, seed=3, **kwargs)
    layer.build()
    optimizer = optimizers.LazyAdam(0.05)
    optimizer.build(layer.trainable_variables)
    return layer, optimizer


def _step_fn(layer, optimizer, table_kernels):
    """One training step; the table's path as asked, the optimizer's always TF ops (so only the table differs)."""
    def step(keys, coef):
        with fast_path.disabled() if not table_kernels else contextlib.nullcontext():
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(layer(keys, training=True) * coef)
            grads = tape.gradient(loss, layer.trainable_variables)
            layer.reset_slots(optimizer)
        with fast_path.disabled():
            optimizer.apply_gradients(zip(grads, layer.trainable_variables))

    return tf.function(step)


def _state(layer, optimizer):
    keys, rows = (t.numpy() for t in layer.key_to_row.export())
    order = np.argsort(keys)
    return ([v.numpy() for v in layer.weights] + [v.numpy() for v in optimizer.variables]
            + [keys[order], rows[order]])


@pytest.mark.parametrize("eviction", ["lru", "lfu"])
@pytest.mark.parametrize("admit_after, default", [(1, "zeros"), (3, "shared_row"), (2, "zeros")])
def test_kernel_and_tf_paths_give_identical_state(eviction, admit_after, default):
    keys, coefs = _stream(5, 20, 16, np.arange(-30, 30, dtype=np.int64) * (2**50 + 7))
    runs = {}
    for table_kernels in (True, False):
        layer, optimizer = _make(eviction=eviction, admit_after=admit_after, default=default)
        step = _step_fn(layer, optimizer, table_kernels)
        for k, c in zip(keys, coefs):
            step(tf.constant(k), tf.constant(c))
        ops = {op.type for op in step.get_concrete_function(tf.constant(keys[0]), tf.constant(coefs[0])).graph
               .get_operations()}
        assert ("EmbedoptKeyIndexUnique" in ops) == table_kernels  # each path ran what it claims
        assert ("EmbedoptDynamicPolicy" in ops) == table_kernels
        runs[table_kernels] = (layer, _state(layer, optimizer))
    assert runs[True][0].counters() == runs[False][0].counters()
    assert runs[True][0].counters()["evictions"] > 0
    for a, b in zip(runs[True][1], runs[False][1]):
        np.testing.assert_array_equal(a, b)  # exact: keys, rows, stamps, sketch, log, counters, rows, slots


def _busy_stream(capacity=2500, seed=11):
    """Batches with thousands of distinct keys, each twice: the table fills, evicts, then (steps 2-5) reads only its
    resident keys, so that the LRU log grows by ~capacity entries a step with no victims and must compact; then a
    Zipf stream with thousands of evictions a step."""
    universe = np.arange(1, 60_000, dtype=np.int64) * 7919 - 2**62
    first = universe[:capacity + capacity // 5]  # capacity fit, the rest stays out: no victims on step 0
    arrived = universe[len(first):len(first) + capacity // 4]
    resident = np.concatenate([arrived, first[:capacity - len(arrived)]])  # step 1 evicts the rows it does not read
    batches = [first, resident] + [resident] * 4
    zipf, _ = _stream(seed, 4, 8192, universe, zipf=1.05)
    keys = [np.concatenate([b, b]) for b in batches] + zipf
    rng = np.random.default_rng(seed)
    return keys, [rng.normal(size=(len(k), 4)).astype(np.float32) for k in keys]


@pytest.mark.parametrize("eviction, admit_after, decay", [("lru", 1, 0), ("lru", 2, 3), ("lfu", 2, 3)])
def test_kernel_and_tf_paths_agree_with_thousands_of_keys_a_step(eviction, admit_after, decay):
    # Sizes where the kernel takes its other branches: the LRU append's radix sort (>= 512 rows, two 11-bit
    # digits for 2500 rows), the log's compaction, the sketch's halving, the LFU selection over thousands of
    # rows, and Philox blocks split across threads.
    keys, coefs = _busy_stream()
    runs = {}
    for table_kernels in (True, False):
        layer = DynamicEmbedding(4, capacity=2500, sketch_width=2**12, seed=9, eviction=eviction,
                                 admit_after=admit_after, sketch_decay_every=decay)
        layer.build()
        optimizer = optimizers.LazyAdam(0.05)
        optimizer.build(layer.trainable_variables)
        step = _step_fn(layer, optimizer, table_kernels)
        tails = []
        for k, c in zip(keys, coefs):
            step(tf.constant(k), tf.constant(c))
            tails.append(int(layer.lru_log.tail.numpy()) if layer.lru_log is not None else 0)
        runs[table_kernels] = (layer, _state(layer, optimizer))
    counters = runs[True][0].counters()
    assert counters == runs[False][0].counters()
    assert counters["evictions"] > 2000
    if eviction == "lru":  # log positions only count up, except when a compaction moves the tail back
        assert any(b < a for a, b in zip(tails, tails[1:])), tails
    for a, b in zip(runs[True][1], runs[False][1]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("eviction", ["lru", "lfu"])
def test_switching_paths_mid_stream_matches_reference(eviction):
    # Each switch to the kernel path finds the native index (and LFU's buckets) out of date and rebuilds them.
    keys, coefs = _stream(8, 24, 16, np.arange(1, 50, dtype=np.int64) * -104729)
    layer, optimizer = _make(eviction=eviction, admit_after=1)
    ref = ReferenceTable(12, eviction=eviction)
    steps = {True: _step_fn(layer, optimizer, True), False: _step_fn(layer, optimizer, False)}
    for t, (k, c) in enumerate(zip(keys, coefs)):
        table_kernels = (t // 3) % 2 == 0  # three steps on each path in turn
        steps[table_kernels](tf.constant(k), tf.constant(c))
        ref.train(k)
        with fast_path.disabled() if not table_kernels else contextlib.nullcontext():
            # The serving lookup of the path that did not train last must see this step's rows too.
            out = layer(tf.constant(k), training=False).numpy()
        rows = ref.rows(k)
        np.testing.assert_array_equal(out[rows >= 0], layer.embeddings.numpy()[rows[rows >= 0]])
        np.testing.assert_array_equal(out[rows < 0], 0.0)
        keys_out, rows_out = (t.numpy() for t in layer.key_to_row.export())
        assert dict(zip(keys_out.tolist(), rows_out.tolist())) == ref.row_of
        np.testing.assert_array_equal(layer.row_stamps.numpy(), ref.stamp)
    assert ref.evictions > 0


def _hot_stream(seed, steps):
    """Batches where 3 of 16 hot keys occur 4096 or 4097 times each (LFU counts past the kernel's 4096 buckets, often
    equal) and 6 cold keys once: with 10 rows, victims come from the buckets and from the heap of large counts, where
    ties on count must go to the row seen least recently (with the heap ordered by count and row alone, the rows
    assigned differ within 14 steps)."""
    rng = np.random.default_rng(seed)
    hot, keys = np.arange(16, dtype=np.int64) * 7 + 1, []
    for t in range(steps):
        picked = rng.choice(hot, 3, replace=False)
        batch = np.concatenate([np.repeat(picked, rng.integers(4096, 4098, 3)), 10_000 + 6 * t + np.arange(6)])
        keys.append(rng.permutation(batch).astype(np.int64))
    return keys, [rng.normal(size=(len(k), 3)).astype(np.float32) for k in keys]


def _saturate(layer):
    """Counts at the clamp (2^31 - 1) and beyond, and steps near 2^32, where the step count overflows the LFU key."""
    counts = layer.row_stamps.numpy()
    counts[:6] = [2**31 - 2, 2**31 - 1, 2**31, 2**40, 2**31 - 2, 2**31]
    layer.row_stamps.assign(counts)
    layer.steps.assign(2**32 - 4)
    layer.rebuild_index()  # state written from outside: the native index and the buckets must be rebuilt


@pytest.mark.parametrize("case", ["large_counts", "saturated"])
def test_kernel_and_tf_paths_agree_on_lfu_counts_past_the_buckets(case):
    keys, coefs = _hot_stream(0, 14)
    runs = {}
    for table_kernels in (True, False):
        layer = DynamicEmbedding(3, capacity=10, seed=3, eviction="lfu")
        layer.build()
        optimizer = optimizers.LazyAdam(0.05)
        optimizer.build(layer.trainable_variables)
        step = _step_fn(layer, optimizer, table_kernels)
        states = []  # after every step: a different victim order may be overwritten again a few steps later
        for t, (k, c) in enumerate(zip(keys, coefs)):
            if case == "saturated" and t == 6:
                _saturate(layer)
            step(tf.constant(k), tf.constant(c))
            states.append(_state(layer, optimizer))
        runs[table_kernels] = (layer, states)
    counters = runs[True][0].counters()
    assert counters == runs[False][0].counters()
    assert counters["evictions"] > 40
    if case == "saturated":
        assert counters["steps"] > 2**32  # the last steps ran past the 32-bit last-seen steps
    for t, (kernel_state, tf_state) in enumerate(zip(runs[True][1], runs[False][1])):
        for a, b in zip(kernel_state, tf_state):
            np.testing.assert_array_equal(a, b, err_msg=f"after step {t}")


def test_restore_at_the_same_step_rebuilds_the_native_index(tmp_path):
    # Two tables trained to the same step count on different keys: only the restore tells the second one's
    # native index that its map changed (its step stamp still matches).
    universe = np.arange(1, 200, dtype=np.int64)
    first, first_opt = _make(admit_after=1)
    second, second_opt = _make(admit_after=1)
    for layer, optimizer, offset in ((first, first_opt, 0), (second, second_opt, 1000)):
        keys, coefs = _stream(1, 6, 16, universe + offset)
        step = _step_fn(layer, optimizer, True)
        for k, c in zip(keys, coefs):
            step(tf.constant(k), tf.constant(c))
    path = tf.train.Checkpoint(layer=first).write(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(layer=second).read(path).assert_consumed()
    probe = tf.constant(universe)
    np.testing.assert_array_equal(second(probe, training=False).numpy(), first(probe, training=False).numpy())
    assert second.counters() == first.counters()
    native_keys, native_rows = (t.numpy() for t in second._native.export())
    assert dict(zip(native_keys.tolist(), native_rows.tolist())) == dict(
        zip(*(t.numpy().tolist() for t in first.key_to_row.export())))


@pytest.mark.parametrize("eviction", ["lru", "lfu"])
def test_native_index_holds_the_tables_keys_after_every_step(eviction):
    # The policy kernel hands its index changes to the next unique op, which makes them beside its dedup; every
    # other reader makes them first. After each step (keys that evict: 60 ids over 12 rows), read the index both
    # ways: an export (which makes the changes) or an inference call (a unique op), against row_keys.
    keys, coefs = _stream(9, 16, 16, np.arange(60, dtype=np.int64) * 7919 - 100)
    layer, optimizer = _make(eviction=eviction, admit_after=1)
    step = _step_fn(layer, optimizer, True)
    probe = tf.constant(np.arange(60, dtype=np.int64) * 7919 - 100)
    for t, (k, c) in enumerate(zip(keys, coefs)):
        step(tf.constant(k), tf.constant(c))
        used = int(layer.rows_in_use.numpy())
        truth = {int(key): row for row, key in enumerate(layer.row_keys.numpy()[:used])}
        if t % 2:
            out = layer(probe, training=False).numpy()
            table = layer.embeddings.numpy()
            for key, row in zip(probe.numpy().tolist(), out):
                want = table[truth[key]] if key in truth else np.zeros(3, np.float32)
                np.testing.assert_array_equal(row, want, err_msg=f"key {key} after step {t}")
        native_keys, native_rows = (x.numpy() for x in layer._native.export())
        assert dict(zip(native_keys.tolist(), native_rows.tolist())) == truth, f"after step {t}"
    assert layer.counters()["evictions"] > 0
