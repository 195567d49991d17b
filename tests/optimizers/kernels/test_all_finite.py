"""EmbedoptAllFinite against NumPy's isfinite, for every kernel dtype and where the bad value sits."""

import numpy as np
import pytest
import tensorflow as tf

from optimizers import fast_path
from optimizers.kernels import ops as kops

pytestmark = pytest.mark.usefixtures("kernel_ops")
DTYPES = [tf.float32, tf.float64, tf.float16, tf.bfloat16]
DTYPE_IDS = ["float32", "float64", "float16", "bfloat16"]
# Sizes around the op's 16384-element blocks, so the bad value lands in the first, a middle and the last block.
SIZES = [1, 7, 16384, 16385, 100_003]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_finite_values_are_finite(dtype, size):
    rng = np.random.default_rng(size)
    values = rng.standard_normal(size) * 100
    # The largest finite magnitude of the type must still count as finite.
    values[size // 2] = -dtype.max if dtype != tf.bfloat16 else -3.0e38
    x = tf.constant(values, tf.float64 if dtype == tf.float64 else tf.float32)
    x = tf.cast(x, dtype)
    assert np.isfinite(tf.cast(x, tf.float64).numpy()).all()
    assert bool(kops.all_finite(x)) is True


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_one_bad_value_anywhere_is_found(dtype, where, bad):
    size = 100_003
    values = np.random.default_rng(0).standard_normal(size)
    position = {"first": 0, "middle": size // 2 + 3, "last": size - 1}[where]
    values[position] = bad
    x = tf.cast(tf.constant(values), dtype)
    assert not np.isfinite(tf.cast(x, tf.float64).numpy()).all()
    assert bool(kops.all_finite(x)) is False


def test_overflow_to_inf_on_cast_is_found():
    # 1e5 is finite in float32 but overflows float16's range (max 65504) to inf.
    x = tf.cast(tf.constant([1.0, 1e5], tf.float32), tf.float16)
    assert bool(kops.all_finite(x)) is False


def test_empty_and_multidimensional():
    assert bool(kops.all_finite(tf.zeros([0, 4]))) is True
    x = np.ones((3, 5, 7), np.float32)
    x[2, 4, 6] = np.nan
    assert bool(kops.all_finite(tf.constant(x))) is False
    assert bool(kops.all_finite(tf.constant(x[:2]))) is True


def test_inside_tf_function():
    check = tf.function(kops.all_finite)
    assert bool(check(tf.constant([1.0, 2.0]))) is True
    assert bool(check(tf.constant([1.0, np.nan]))) is False


def test_optimizer_flags_use_the_kernel_for_sparse_gradients_only():
    table = tf.Variable(tf.zeros([10, 3]))
    dense = tf.Variable(tf.zeros([3]))
    sparse_grad = tf.IndexedSlices(tf.constant([[1.0, np.inf, 0.0]]), tf.constant([4]), tf.constant([10, 3]))
    flags = fast_path.finite_flags([sparse_grad, tf.constant([1.0, 2.0, 3.0])], [table, dense])
    np.testing.assert_array_equal(flags.numpy(), [False, True])
    graph = tf.function(fast_path.finite_flags).get_concrete_function(
        [sparse_grad, tf.constant([1.0, 2.0, 3.0])], [table, dense]).graph
    op_types = [op.type for op in graph.get_operations()]
    assert op_types.count("EmbedoptAllFinite") == 1 and "IsFinite" in op_types
    with fast_path.disabled():
        graph = tf.function(fast_path.finite_flags).get_concrete_function(
            [sparse_grad, tf.constant([1.0, 2.0, 3.0])], [table, dense]).graph
    assert "EmbedoptAllFinite" not in [op.type for op in graph.get_operations()]
