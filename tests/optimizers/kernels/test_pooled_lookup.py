"""EmbedoptPooledLookup and its gradient against NumPy and TensorFlow's own gather.

Tolerances: float32 rtol=1e-5, atol=1e-6; float64 rtol=1e-12, atol=1e-12
(sums of the same terms in another order, a divide where NumPy multiplies).
"""

import numpy as np
import pytest
import tensorflow as tf

from optimizers.kernels import ops as kops

pytestmark = pytest.mark.usefixtures("kernel_ops")

ROWS, WIDTH = 9, 3
# Bags: duplicates inside a bag, an empty bag, the first and the last row.
BAGS = [[0, 8, 0], [], [4], [8, 2, 2, 5], []]
TOL = {tf.float32: dict(rtol=1e-5, atol=1e-6), tf.float64: dict(rtol=1e-12, atol=1e-12)}


def _divisors(weights, combiner):
    if combiner == "sum":
        return [1.0] * len(weights)
    if combiner == "mean":
        return [float(np.sum(w)) for w in weights]
    return [float(np.sqrt(np.sum(np.square(w)))) for w in weights]


def numpy_lookup(table, bags, weights, combiner):
    out = np.zeros((len(bags), table.shape[1]))
    for b, (ids, w, divisor) in enumerate(zip(bags, weights, _divisors(weights, combiner))):
        if ids and divisor:
            out[b] = (np.asarray(w)[:, None] * table[ids]).sum(axis=0) / divisor
    return out


def numpy_table_gradient(upstream, bags, weights, combiner, rows):
    grad = np.zeros((rows, upstream.shape[1]))
    for b, (ids, w, divisor) in enumerate(zip(bags, weights, _divisors(weights, combiner))):
        for i, wi in zip(ids, w):
            if divisor:
                grad[i] += wi / divisor * upstream[b]
    return grad


def _inputs(dtype, weighted, seed=0, width=WIDTH):
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((ROWS, width))
    weights = [list(rng.random(len(b)) + 0.5) if weighted else [1.0] * len(b) for b in BAGS]
    upstream = rng.standard_normal((len(BAGS), width))
    ids = tf.ragged.constant(BAGS, dtype=tf.int64, ragged_rank=1, inner_shape=())
    ragged_weights = tf.RaggedTensor.from_row_splits(tf.constant(sum(weights, []), dtype), ids.row_splits)
    return table, weights, upstream, ids, (ragged_weights if weighted else None)


# Widths the kernels unroll at compile time (8, 32, 128: common.h WithRowWidth) and others (3, 129).
@pytest.mark.parametrize("width", [3, 8, 32, 128, 129])
@pytest.mark.parametrize("index_dtype", [tf.int32, tf.int64], ids=["int32", "int64"])
@pytest.mark.parametrize("dtype", [tf.float32, tf.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("combiner", ["sum", "mean", "sqrtn"])
def test_forward_and_gradient_match_numpy(combiner, weighted, dtype, index_dtype, width):
    table_np, weights, upstream, ids, ragged_weights = _inputs(dtype, weighted, width=width)
    table = tf.Variable(tf.constant(table_np, dtype))
    ids = tf.cast(ids, index_dtype)
    with tf.GradientTape() as tape:
        pooled = kops.pooled_lookup(table, ids, weights=ragged_weights, combiner=combiner)
        loss = tf.reduce_sum(pooled * tf.constant(upstream, dtype))
    grad = tape.gradient(loss, table)
    np.testing.assert_allclose(pooled.numpy(), numpy_lookup(table_np, BAGS, weights, combiner), **TOL[dtype])
    assert isinstance(grad, tf.IndexedSlices)
    assert grad.indices.dtype == index_dtype
    np.testing.assert_array_equal(grad.indices.numpy(), np.unique(sum(BAGS, [])))  # ascending, distinct
    np.testing.assert_array_equal(grad.dense_shape.numpy(), [ROWS, width])
    dense = tf.math.unsorted_segment_sum(grad.values, grad.indices, ROWS).numpy()
    np.testing.assert_allclose(dense, numpy_table_gradient(upstream, BAGS, weights, combiner, ROWS), **TOL[dtype])


@pytest.mark.parametrize("combiner", ["sum", "mean"])
def test_matches_tensorflow_gather_and_reduce(combiner):
    """The TF path today: gather on the variable, reduce per bag, and its gradient."""
    table_np, _, upstream, ids, _ = _inputs(tf.float32, weighted=False, seed=3)
    table = tf.Variable(table_np.astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        ours = kops.pooled_lookup(table, ids, combiner=combiner)
        rows = tf.gather(table, ids)
        theirs = tf.reduce_sum(rows, axis=1) if combiner == "sum" else tf.math.divide_no_nan(
            tf.reduce_sum(rows, axis=1), tf.cast(ids.row_lengths(), tf.float32)[:, None])
        losses = [tf.reduce_sum(x * upstream.astype(np.float32)) for x in (ours, theirs)]
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), **TOL[tf.float32])
    ours_grad, theirs_grad = (tape.gradient(loss, table) for loss in losses)
    np.testing.assert_allclose(tf.convert_to_tensor(ours_grad).numpy(), tf.convert_to_tensor(theirs_grad).numpy(),
                               **TOL[tf.float32])


def test_bag_structures_agree():
    """A [batch, F] matrix, a RaggedTensor and flat ids + row_splits are the same lookup."""
    table = tf.Variable(tf.random.normal([ROWS, WIDTH], seed=1))
    matrix = tf.constant([[1, 2], [8, 1], [0, 0]])
    flat = kops.pooled_lookup(table, tf.reshape(matrix, [-1]), row_splits=tf.constant([0, 2, 4, 6]))
    np.testing.assert_array_equal(kops.pooled_lookup(table, matrix).numpy(), flat.numpy())
    ragged = tf.RaggedTensor.from_tensor(matrix)
    np.testing.assert_array_equal(kops.pooled_lookup(table, ragged).numpy(), flat.numpy())
    one_hot = kops.pooled_lookup(table, tf.constant([4, 0]))  # each id a bag of one
    np.testing.assert_array_equal(one_hot.numpy(), tf.gather(table, [4, 0]).numpy())


def test_gradient_inside_tf_function_is_indexed_slices():
    table = tf.Variable(tf.ones([ROWS, WIDTH]))

    @tf.function
    def step(ids):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(kops.pooled_lookup(table, ids, combiner="mean"))
        grad = tape.gradient(loss, table)
        assert isinstance(grad, tf.IndexedSlices)
        return grad.indices, grad.values

    indices, values = step(tf.constant([[3, 1], [3, 3]]))
    np.testing.assert_array_equal(indices.numpy(), [1, 3])
    np.testing.assert_allclose(values.numpy(), [[0.5] * WIDTH, [1.5] * WIDTH])


def test_lookup_never_reads_the_whole_table():
    """No ReadVariableOp on the table: a full read would force a copy of the table on the next update."""
    table = tf.Variable(tf.ones([ROWS, WIDTH]))

    @tf.function
    def step(ids):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(kops.pooled_lookup(table, ids))
        return tape.gradient(loss, table).values

    graph = step.get_concrete_function(tf.TensorSpec([None, 2], tf.int64)).graph
    op_types = {op.type for op in graph.get_operations()}
    assert "EmbedoptPooledLookup" in op_types and "EmbedoptPooledLookupGrad" in op_types
    assert "ReadVariableOp" not in op_types


def test_grad_op_output_takes_the_dedup_fast_path():
    upstream = tf.random.normal([3, WIDTH])
    unique, summed = kops.pooled_lookup_grad(upstream, tf.constant([5, 1, 5, 1]), tf.constant([0, 2, 3, 4], tf.int64),
                                             None, ROWS)
    again_ids, again = kops.dedup(unique, summed)
    np.testing.assert_array_equal(again_ids.numpy(), [1, 5])
    np.testing.assert_array_equal(again.numpy(), summed.numpy())


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16], ids=["float16", "bfloat16"])
def test_half_types_close_to_float32(dtype):
    table_np, weights, upstream, ids, _ = _inputs(tf.float32, weighted=False)
    table = tf.Variable(tf.constant(table_np, dtype))
    with tf.GradientTape() as tape:
        pooled = kops.pooled_lookup(table, ids, combiner="sqrtn")
        loss = tf.reduce_sum(tf.cast(pooled, tf.float32) * upstream)
    grad = tape.gradient(loss, table)
    assert pooled.dtype == dtype and grad.values.dtype == dtype
    rounded = tf.cast(tf.constant(table_np, dtype), tf.float32).numpy()
    np.testing.assert_allclose(tf.cast(pooled, tf.float32).numpy(), numpy_lookup(rounded, BAGS, weights, "sqrtn"),
                               rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("bad_id", [-2, ROWS])
def test_out_of_range_id_raises_naming_it(bad_id):
    table = tf.Variable(tf.ones([ROWS, WIDTH]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"ids\[3\] = {bad_id} is not in \[0, {ROWS}\)"):
        kops.pooled_lookup(table, tf.constant([[1, 2], [3, bad_id]]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"ids\[3\] = {bad_id} is not in \[0, {ROWS}\)"):
        kops.pooled_lookup_grad(tf.ones([2, WIDTH]), tf.constant([1, 2, 3, bad_id]),
                                tf.constant([0, 2, 4], tf.int64), None, ROWS)


@pytest.mark.parametrize(
    "ids, splits, weights, message",
    [
        ([1, 2], [0, 1], None, r"row_splits must start at 0 and end at len\(ids\) = 2, got 0 and 1"),
        ([1, 2], [0, 2, 1, 2], None, r"row_splits must be non-decreasing, got row_splits\[1\] = 2 > row_splits\[2\]"),
        ([1, 2], [0, 2], [1.0], r"weights must have shape \[2\] \(one per id\) or \[0\]"),
    ],
)
def test_bad_bags_raise_naming_the_argument(ids, splits, weights, message):
    table = tf.Variable(tf.ones([ROWS, WIDTH]))
    weights = None if weights is None else tf.constant(weights)
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        kops.pooled_lookup(table, tf.constant(ids), tf.constant(splits, tf.int64), weights)


def test_zero_weight_sum_gives_zeros_not_nan():
    table = tf.Variable(tf.ones([ROWS, WIDTH]))
    pooled = kops.pooled_lookup(table, tf.constant([[1, 2]]), weights=tf.constant([[1.0, -1.0]]), combiner="mean")
    np.testing.assert_array_equal(pooled.numpy(), np.zeros([1, WIDTH]))


def test_mirrored_strategy_gradient_per_replica(mirrored_strategy):
    with mirrored_strategy.scope():
        table = tf.Variable(tf.ones([ROWS, WIDTH]))

    @tf.function
    def step(ids):
        def replica_fn(ids):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(kops.pooled_lookup(table, ids))
            grad = tape.gradient(loss, table)
            return tf.math.unsorted_segment_sum(grad.values, grad.indices, ROWS)

        return mirrored_strategy.run(replica_fn, args=(ids,))

    grads = mirrored_strategy.experimental_local_results(step(tf.constant([[2, 2]])))
    for grad in grads:
        np.testing.assert_array_equal(grad.numpy()[2], [2.0] * WIDTH)


@pytest.mark.parametrize("combiner", ["sum", "sqrtn"])
def test_the_lookups_grouping_gives_the_same_gradient_bits_as_grouping_in_the_gradient(combiner):
    """The forward op groups the ids (outputs 1, 2) beside its gather; the gradient fed that grouping must
    equal, bit for bit, the gradient that groups the ids itself, on Zipf-like ids with many duplicates."""
    rng = np.random.default_rng(5)
    rows, bags, per_bag = 5000, 700, 13
    ids = np.minimum(rng.zipf(1.3, bags * per_bag) - 1, rows - 1).astype(np.int64)
    splits = np.arange(bags + 1, dtype=np.int64) * per_bag
    table = tf.Variable(rng.standard_normal((rows, 4)).astype(np.float32))
    weights = tf.constant(rng.random(len(ids)).astype(np.float32) + 0.5)
    _, order, starts = kops._ops().embedopt_pooled_lookup(table.handle, ids, splits, weights, combiner=combiner)
    # The grouping is a stable sort: positions ordered by (id, position), groups one per distinct id.
    np.testing.assert_array_equal(order.numpy(), np.argsort(ids, kind="stable"))
    assert len(starts.numpy()) - 1 == len(np.unique(ids))
    upstream = tf.constant(rng.standard_normal((bags, 4)).astype(np.float32))
    grouped = kops.pooled_lookup_grad(upstream, ids, splits, weights, rows, combiner, groups=(order, starts))
    alone = kops.pooled_lookup_grad(upstream, ids, splits, weights, rows, combiner)
    for a, b in zip(grouped, alone):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("order, starts, message", [
    ([0, 1], [0, 3], "order must have shape"),
    ([0, 1, 2], [0, 2], "group_starts must run from 0 to 3"),
    ([0, 1, 2], [0, 2, 2, 3], "strictly increasing"),
    ([0, 1, 7], [0, 1, 3], r"order\[2\] is out of range"),
])
def test_a_bad_grouping_is_refused_naming_it(order, starts, message):
    upstream = tf.ones([1, 2])
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        kops.pooled_lookup_grad(upstream, tf.constant([1, 1, 2], tf.int64), tf.constant([0, 3], tf.int64), None, 4,
                                groups=(tf.constant(order, tf.int32), tf.constant(starts, tf.int32)))
