"""The key -> row index kernels of DynamicEmbedding and their row helpers, against NumPy / Python dicts."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from optimizers.kernels import ops

INT64_MIN, INT64_MAX = np.iinfo(np.int64).min, np.iinfo(np.int64).max
_names = iter(range(10**6))


def _index():
    return ops.key_index_handle(shared_name=f"test_key_index_{next(_names)}")


def _first_occurrence(keys):
    unique, position, counts = [], [], []
    at = {}
    for k in keys.tolist():
        if k not in at:
            at[k] = len(unique)
            unique.append(k)
            counts.append(0)
        position.append(at[k])
        counts[at[k]] += 1
    return np.array(unique, np.int64), np.array(position, np.int32), np.array(counts, np.int64)


def _export(index, row_keys, used, steps):
    keys, rows = (t.numpy() for t in ops.key_index_export(index, row_keys, tf.constant(used, tf.int64),
                                                          tf.constant(steps, tf.int64)))
    return dict(zip(keys.tolist(), rows.tolist()))


@pytest.mark.parametrize("seed", [0, 1])
def test_unique_matches_first_occurrence_order_and_rows(kernel_ops, seed):
    rng = np.random.default_rng(seed)
    capacity = 300
    resident = np.unique(rng.integers(INT64_MIN, INT64_MAX, 200, dtype=np.int64, endpoint=True))[:150]
    resident[:2] = [INT64_MIN, INT64_MAX]
    row_keys = tf.Variable(np.concatenate([resident, np.zeros(capacity - len(resident), np.int64)]))
    others = np.array([-1, 0, 1, INT64_MIN + 1, INT64_MAX - 1] + rng.integers(-10**18, 10**18, 40).tolist(), np.int64)
    keys = rng.choice(np.concatenate([resident, others]), 5000)
    unique, position, counts, rows = (t.numpy() for t in ops.key_index_unique(
        _index(), tf.constant(keys), row_keys, tf.constant(len(resident), tf.int64), tf.constant(0, tf.int64)))
    want_unique, want_position, want_counts = _first_occurrence(keys)
    np.testing.assert_array_equal(unique, want_unique)
    np.testing.assert_array_equal(position, want_position)
    np.testing.assert_array_equal(counts, want_counts)
    row_of = {int(k): r for r, k in enumerate(resident)}
    np.testing.assert_array_equal(rows, [row_of.get(int(k), -1) for k in want_unique])


def test_unique_keeps_first_occurrence_order_over_batches_on_one_index(kernel_ops):
    # The op's set of distinct keys lives in the index between calls: it must be empty again after each batch,
    # grow when a later batch brings more keys, and tell apart keys that hash to few slots (k << 58 differ only in
    # their top 6 bits, keys at the int64 extremes).
    rng = np.random.default_rng(7)
    index = _index()
    row_keys = tf.Variable(np.zeros(8, np.int64))
    crowded = (np.arange(-32, 32, dtype=np.int64) << 58)
    pool = np.concatenate([crowded, [INT64_MIN, INT64_MAX, -1, 0, 1],
                           rng.integers(INT64_MIN, INT64_MAX, 3000, dtype=np.int64, endpoint=True)])
    for size, spread in ((50, 20), (4000, 3069), (10, 3), (20_000, 3069), (0, 1), (300, 64)):
        keys = rng.choice(pool[:spread], size)
        unique, position, counts, rows = (t.numpy() for t in ops.key_index_unique(
            index, tf.constant(keys, tf.int64), row_keys, tf.constant(0, tf.int64), tf.constant(0, tf.int64)))
        want_unique, want_position, want_counts = _first_occurrence(keys)
        np.testing.assert_array_equal(unique, want_unique.reshape(-1))
        np.testing.assert_array_equal(position, want_position.reshape(-1))
        np.testing.assert_array_equal(counts, want_counts.reshape(-1))
        np.testing.assert_array_equal(rows, -np.ones(len(want_unique), np.int64))


def test_unique_of_large_batches_matches_first_occurrence(kernel_ops):
    # Batches of 16k to 100k keys, so that slots are prefetched far ahead and the set grows several times within
    # one batch; skewed ones too: keys that agree in their top bits (one half of a random set), one key repeated,
    # a few keys over a long batch. Keys at the int64 extremes among them.
    rng = np.random.default_rng(11)
    index = _index()
    row_keys = tf.Variable(np.zeros(8, np.int64))
    spread = rng.integers(INT64_MIN, INT64_MAX, 120_000, dtype=np.int64, endpoint=True)
    spread[:2] = [INT64_MIN, INT64_MAX]
    first_part = spread[spread < 0]
    batches = [rng.choice(spread[:30_000], 100_000), rng.choice(first_part, 40_000), spread[:16_384],
               np.full(20_000, INT64_MIN, np.int64), rng.choice(np.concatenate([first_part[:50], spread[:9]]), 17_000)]
    for keys in batches:
        unique, position, counts, rows = (t.numpy() for t in ops.key_index_unique(
            index, tf.constant(keys, tf.int64), row_keys, tf.constant(0, tf.int64), tf.constant(0, tf.int64)))
        want_unique, want_position, want_counts = _first_occurrence(keys)
        np.testing.assert_array_equal(unique, want_unique)
        np.testing.assert_array_equal(position, want_position)
        np.testing.assert_array_equal(counts, want_counts)
        np.testing.assert_array_equal(rows, -np.ones(len(want_unique), np.int64))


def test_updates_under_churn_match_a_dict(kernel_ops):
    # Capacity 64 in 128 slots, keys chosen to collide (multiples of 2**40 share low bits before hashing) and
    # thousands of removals: backward-shift deletion must keep every probe run intact.
    rng = np.random.default_rng(3)
    capacity = 64
    index = _index()
    row_keys = tf.Variable(np.zeros(capacity, np.int64))
    universe = (np.arange(500, dtype=np.int64) - 250) * (2**40 + 1)
    truth = {}
    step = 0
    ops.key_index_unique(index, tf.zeros([0], tf.int64), row_keys, tf.constant(0, tf.int64), tf.constant(0, tf.int64))
    for _ in range(300):
        resident = list(truth)
        removed = rng.choice(resident, min(len(resident), rng.integers(0, 20)), replace=False) if resident else []
        free_rows = sorted(set(range(capacity)) - {truth[k] for k in resident if k not in set(removed)})
        candidates = [k for k in rng.choice(universe, 30).tolist() if k not in truth or k in set(removed)]
        inserted = list(dict.fromkeys(k for k in candidates if k not in truth))[:len(free_rows)]
        for k in removed:
            del truth[k]
        rows = free_rows[:len(inserted)]
        truth.update(zip(inserted, rows))
        ops.key_index_update(index, tf.constant(np.array(removed, np.int64)), tf.constant(np.array(inserted, np.int64)),
                             tf.constant(np.array(rows, np.int64)), tf.constant(step + 1, tf.int64))
        step += 1
        probe = tf.constant(universe)
        _, _, _, got = ops.key_index_unique(index, probe, row_keys, tf.constant(0, tf.int64),
                                            tf.constant(step, tf.int64))
        np.testing.assert_array_equal(got.numpy(), [truth.get(int(k), -1) for k in universe])
    assert _export(index, row_keys, 0, step) == truth


def test_index_is_rebuilt_from_row_keys_when_its_stamp_differs(kernel_ops):
    index = _index()
    row_keys = tf.Variable(np.array([7, -3, 11, 0], np.int64))
    assert _export(index, row_keys, 2, 5) == {7: 0, -3: 1}  # first use: built from row_keys[:2]
    ops.key_index_update(index, tf.constant([7], tf.int64), tf.constant([99], tf.int64), tf.constant([0], tf.int64),
                         tf.constant(6, tf.int64))
    assert _export(index, row_keys, 2, 6) == {99: 0, -3: 1}  # stamped 6: the update stands
    assert _export(index, row_keys, 3, 9) == {7: 0, -3: 1, 11: 2}  # another step count: rebuilt
    ops.key_index_reset(index)
    row_keys.assign([5, 6, 7, 8])
    assert _export(index, row_keys, 4, 9) == {5: 0, 6: 1, 7: 2, 8: 3}  # reset: rebuilt although stamped 9


def test_update_refuses_an_index_that_is_out_of_date(kernel_ops):
    index = _index()
    row_keys = tf.Variable(np.zeros(4, np.int64))
    ops.key_index_unique(index, tf.constant([1], tf.int64), row_keys, tf.constant(0, tf.int64),
                         tf.constant(3, tf.int64))
    with pytest.raises(tf.errors.FailedPreconditionError, match="stamped with step 3, not 4"):
        ops.key_index_update(index, tf.zeros([0], tf.int64), tf.constant([1], tf.int64), tf.constant([0], tf.int64),
                             tf.constant(5, tf.int64))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"inserted_rows\[0\] = 4 is not in \[0, 4\)"):
        ops.key_index_update(index, tf.zeros([0], tf.int64), tf.constant([1], tf.int64), tf.constant([4], tf.int64),
                             tf.constant(4, tf.int64))
    with pytest.raises(tf.errors.InvalidArgumentError, match="holds a key twice"):
        ops.key_index_reset(index)
        ops.key_index_export(index, tf.Variable(np.array([2, 2], np.int64)), tf.constant(2, tf.int64),
                             tf.constant(0, tf.int64))


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("num_keys, n", [(7, 3000), (600, 40_000)])
def test_resident_lookup_and_its_gradient_match_numpy(kernel_ops, dtype, num_keys, n):
    # 40,000 positions: the gradient's keys are cut into one range per thread, summed side by side.
    rng = np.random.default_rng(5)
    table = rng.normal(size=(num_keys * 7, 3)).astype(np.float32)
    rows = rng.choice(len(table), num_keys, replace=False).astype(np.int64)  # distinct keys' rows, -1: no row
    rows[rng.random(num_keys) < 0.3] = -1
    rows[:4] = [0, -1, len(table) - 1, 7]
    position = rng.integers(0, len(rows), n).astype(np.int32)
    position[:len(rows)] = np.arange(len(rows))
    var = tf.Variable(tf.cast(table, dtype))
    upstream = rng.normal(size=(len(position), 3)).astype(np.float32)
    with tf.GradientTape() as tape:
        out = ops.resident_lookup(var, tf.constant(rows), tf.constant(position))
        loss = tf.reduce_sum(tf.cast(out, tf.float32) * upstream)
    grad = tape.gradient(loss, var)
    key_rows = rows[position]
    rounded = tf.cast(tf.cast(table, dtype), tf.float32).numpy()
    want = np.where((key_rows >= 0)[:, None], rounded[np.maximum(key_rows, 0)], 0.0)
    np.testing.assert_array_equal(tf.cast(out, tf.float32).numpy(), want)
    assert isinstance(grad, tf.IndexedSlices)
    np.testing.assert_array_equal(grad.indices.numpy(), np.sort(rows[rows >= 0]))  # one per key, ascending
    up = tf.cast(tf.cast(upstream, dtype), tf.float64).numpy()
    wide = np.float64 if dtype == "float64" else np.float32  # half types are summed in float32, rounded once
    totals = np.zeros((len(rows), 3), wide)
    np.add.at(totals, position, up.astype(wide))  # per key, from zero, one position after another in input order
    key_of_row = {int(r): j for j, r in enumerate(rows) if r >= 0}
    want_values = totals[[key_of_row[int(r)] for r in grad.indices.numpy()]]
    np.testing.assert_array_equal(tf.cast(grad.values, tf.float64).numpy(),
                                  tf.cast(tf.cast(want_values, dtype), tf.float64).numpy())


def test_resident_lookup_names_bad_rows_and_positions(kernel_ops):
    var = tf.Variable(tf.zeros([5, 2]))
    rows = tf.constant([4, -1, 0], tf.int64)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"position\[1\] = 3 is not in \[0, 3\)"):
        ops.resident_lookup(var, rows, tf.constant([0, 3], tf.int32))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"rows\[0\] = 5 is not -1 or in \[0, 5\)"):
        ops.resident_lookup(var, tf.constant([5], tf.int64), tf.constant([0], tf.int32))
    with pytest.raises(tf.errors.InvalidArgumentError, match="holds a row twice"):
        ops.resident_lookup_grad(tf.zeros([2, 2]), tf.constant([1, 1], tf.int64), tf.constant([0, 1], tf.int32))


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_fill_rows_sets_only_those_rows(kernel_ops, dtype):
    start = np.arange(24, dtype=np.float32).reshape(6, 4)
    var = tf.Variable(tf.cast(start, dtype))
    ops.fill_rows(var, tf.constant([4, 1], tf.int64), 0.25)
    want = start.copy()
    want[[1, 4]] = 0.25
    np.testing.assert_array_equal(tf.cast(var, tf.float32).numpy(), want)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"rows\[0\] = 6 is not in \[0, 6\)"):
        ops.fill_rows(var, tf.constant([6], tf.int64), 1.0)


def test_fill_rows_sets_each_variable_to_its_own_value(kernel_ops):
    rng = np.random.default_rng(0)
    table, vector = rng.normal(size=(40, 3)).astype(np.float32), rng.normal(size=40).astype(np.float32)
    variables = [tf.Variable(table), tf.Variable(vector)]
    rows = rng.choice(40, 25, replace=False)  # enough rows for the prefetch and the thread split
    ops.fill_rows(variables, tf.constant(rows, tf.int64), [0.5, -2.0])
    table[rows], vector[rows] = 0.5, -2.0
    np.testing.assert_array_equal(variables[0].numpy(), table)
    np.testing.assert_array_equal(variables[1].numpy(), vector)
