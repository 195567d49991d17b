"""EmbedoptDedup against tf.unique + unsorted_segment_sum, and its determinism.

Tolerance: rtol=1e-6 (float32) / 1e-14 (float64) against the TF path, which
adds the same rows in the same order but starting from zero.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from optimizers import sparse
from optimizers.kernels import ops as kops

pytestmark = pytest.mark.usefixtures("kernel_ops")
TOL = {tf.float32: 1e-6, tf.float64: 1e-14}
REPO = Path(__file__).resolve().parents[3]


def _dense(indices, values, rows):
    return tf.math.unsorted_segment_sum(values, indices, rows).numpy()


@pytest.mark.parametrize("width", [1, 3, 129])
@pytest.mark.parametrize("index_dtype", [tf.int32, tf.int64], ids=["int32", "int64"])
@pytest.mark.parametrize("dtype", [tf.float32, tf.float64], ids=["float32", "float64"])
def test_dedup_equals_unique_and_segment_sum(dtype, index_dtype, width):
    rng = np.random.default_rng(width)
    ids = tf.constant(rng.zipf(1.3, 500) % 97, index_dtype)
    values = tf.constant(rng.standard_normal((500, width)), dtype)
    unique, summed = kops.dedup(ids, values)
    assert unique.dtype == index_dtype and summed.dtype == dtype
    np.testing.assert_array_equal(unique.numpy(), np.unique(ids.numpy()))
    want = sparse.dedup_indexed_slices(tf.IndexedSlices(values, ids, [97, width]))
    np.testing.assert_allclose(_dense(unique, summed, 97), _dense(want.indices, want.values, 97), rtol=TOL[dtype],
                               atol=0)


@pytest.mark.parametrize(
    "ids, want_ids",
    [
        ([3, 3, 1, 7, 1, 3], [1, 3, 7]),
        ([1, 1, 2, 5, 5, 5], [1, 2, 5]),
        ([9], [9]),
        ([-4, 2**40, -4, 0], [-4, 0, 2**40]),
    ],
    ids=["unsorted", "non_decreasing", "single", "wide_int64_range"],
)
def test_rows_summed_in_order_per_id(ids, want_ids):
    values = tf.constant(np.arange(len(ids) * 2, dtype=np.float64).reshape(-1, 2))
    unique, summed = kops.dedup(tf.constant(ids, tf.int64), values)
    np.testing.assert_array_equal(unique.numpy(), want_ids)
    want = np.stack([values.numpy()[np.array(ids) == i].sum(axis=0) for i in want_ids])
    np.testing.assert_array_equal(summed.numpy(), want)


def test_large_input_sorted_in_chunks_matches_numpy():
    """Over 65536 ids the radix sort splits its passes into chunks; the sums must not change."""
    rng = np.random.default_rng(3)
    ids = rng.zipf(1.2, 150_000) % 70_000 - 5  # negative ids too
    values = rng.standard_normal((ids.size, 2))
    unique, summed = kops.dedup(tf.constant(ids), tf.constant(values))
    want_ids, inverse = np.unique(ids, return_inverse=True)
    want = np.zeros((want_ids.size, 2))
    np.add.at(want, inverse, values)  # in input order, as the kernel
    np.testing.assert_array_equal(unique.numpy(), want_ids)
    np.testing.assert_allclose(summed.numpy(), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n, span", [(5_000, 2**9), (5_000, 2**20), (5_000, 2**25), (100_000, 2**31),
                                     (200_000, 2**20), (200_000, 2**25)],
                         ids=["one_pass", "two_passes", "three_passes", "four_passes", "chunks_two_passes",
                              "chunks_three_passes"])
def test_every_radix_pass_count_and_chunking_matches_numpy(n, span):
    """The sort takes ceil(bits / 11) passes over the ids' span, counted in one read with one chunk."""
    rng = np.random.default_rng(n + span)
    ids = np.concatenate([[0, span - 1], rng.integers(0, span, n - 2)])
    ids[rng.integers(0, n, n // 3)] = ids[rng.integers(0, n, n // 3)]  # duplicates far apart
    values = rng.standard_normal((ids.size, 1))
    unique, summed = kops.dedup(tf.constant(ids - 7), tf.constant(values))
    want_ids, inverse = np.unique(ids - 7, return_inverse=True)
    want = np.zeros((want_ids.size, 1))
    np.add.at(want, inverse, values)
    np.testing.assert_array_equal(unique.numpy(), want_ids)
    np.testing.assert_allclose(summed.numpy(), want, rtol=1e-12, atol=1e-12)


def test_strictly_ascending_input_is_returned_unchanged():
    ids = tf.constant([0, 4, 9], tf.int32)
    values = tf.random.normal([3, 5])
    unique, summed = kops.dedup(ids, values)
    np.testing.assert_array_equal(unique.numpy(), ids.numpy())
    np.testing.assert_array_equal(summed.numpy(), values.numpy())


def test_empty_input():
    unique, summed = kops.dedup(tf.zeros([0], tf.int64), tf.zeros([0, 4]))
    assert unique.shape == [0] and summed.shape == [0, 4]


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16], ids=["float16", "bfloat16"])
def test_half_types_sum_in_float(dtype):
    values = tf.constant([[1.0], [2.0**-9], [2.0**-9]], dtype)  # 1 + 2**-8 is exact in float, not half-by-half
    _, summed = kops.dedup(tf.constant([5, 5, 5]), values)
    assert summed.dtype == dtype
    np.testing.assert_allclose(tf.cast(summed, tf.float32).numpy(), [[1.0 + 2.0**-8]], rtol=1e-2)


def test_inside_tf_function():
    dedup = tf.function(kops.dedup)
    unique, summed = dedup(tf.constant([2, 0, 2]), tf.constant([[1.0], [2.0], [3.0]]))
    np.testing.assert_array_equal(unique.numpy(), [0, 2])
    np.testing.assert_array_equal(summed.numpy(), [[2.0], [4.0]])


def test_mismatched_values_raise_naming_them():
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"values must have shape \[3, \.\.\.\]"):
        kops.dedup(tf.constant([1, 2, 3]), tf.zeros([2, 4]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"indices must be a vector"):
        kops.dedup(tf.constant([[1, 2]]), tf.zeros([1, 4]))


def test_bit_identical_with_one_or_two_threads_and_run_to_run():
    """Each id's rows are summed in input order by one thread, whatever the thread count.

    The worker also runs every op twice and fails if the two runs differ.
    """
    digests = []
    for threads in (1, 2):
        result = subprocess.run([sys.executable, "-m", "tests.optimizers.kernels.determinism_worker", str(threads)],
                                cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
        assert result.returncode == 0, result.stderr[-2000:]
        digests.append(result.stdout.strip().splitlines()[-1])
    assert digests[0] == digests[1], digests
