"""`ShardedEmbedding` pooling bags: NumPy reference on one replica; both exchanges == one replica, 2 and 3 workers."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import optimizers
from tests.optimizers import sharded_bag_worker as worker
from tests.optimizers.worker_processes import run_workers

BAGS = [[2, 2, 5], [], [0], [7, 1, 7, 7]]
WEIGHTS = [[0.5, 1.5, 2.0], [], [3.0], [1.0, 0.25, 0.5, 2.0]]
CASES = ["sgd:sum", "adagrad:sum", "rowwise_adagrad:mean", "lazy_adam:mean", "ftrl:sqrtn:weighted"]
CASES_3 = ["ftrl:sqrtn:weighted"]
# Float32 state after 4 steps; the replicas' sums run in another order than one replica's.
RTOL, ATOL = 1e-5, 1e-7


def numpy_pooled(table, bags, weights, combiner):
    out = np.zeros((len(bags), table.shape[1]))
    for b, (bag, w) in enumerate(zip(bags, weights)):
        for i, wi in zip(bag, w):
            out[b] += wi * table[i]
        divisor = {"sum": 1.0, "mean": sum(w), "sqrtn": math.sqrt(sum(x * x for x in w))}[combiner] if bag else 0.0
        out[b] = out[b] / divisor if divisor else 0.0
    return out


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("combiner", ["sum", "mean", "sqrtn"])
def test_single_replica_pooling_and_gradient_match_numpy(combiner, weighted):
    init = optimizers.RowUniform(-1.0, 1.0, seed=3)
    layer = optimizers.ShardedEmbedding(9, 2, embeddings_initializer=init, combiner=combiner)
    layer.build()
    weights = WEIGHTS if weighted else [[1.0] * len(b) for b in BAGS]
    ids = tf.ragged.constant(BAGS, dtype=tf.int64)
    upstream = np.array([[1.0, -2.0], [3.0, 0.5], [0.25, 1.0], [-1.0, 4.0]])
    with tf.GradientTape() as tape:
        out = layer(ids, tf.ragged.constant(WEIGHTS)) if weighted else layer(ids)
        loss = tf.reduce_sum(out * upstream)
    table = init((9, 2)).numpy().astype(np.float64)
    np.testing.assert_allclose(out.numpy(), numpy_pooled(table, BAGS, weights, combiner), rtol=1e-6, atol=1e-7)
    grad = tape.gradient(loss, layer.embeddings.value)
    assert isinstance(grad, tf.IndexedSlices)
    dense = np.zeros((9, 2))
    np.add.at(dense, grad.indices.numpy(), grad.values.numpy())
    # d loss / d table[i] = sum over the occurrences of i of w / divisor(bag) * upstream[bag].
    want = np.zeros((9, 2))
    for b, (bag, w) in enumerate(zip(BAGS, weights)):
        unit = numpy_pooled(np.eye(9), [bag], [w], combiner)[0]  # the factor of each row in this bag
        want += unit[:, None] * upstream[b][None, :]
    np.testing.assert_allclose(dense, want, rtol=1e-6, atol=1e-7)


def test_a_bag_matrix_pools_as_uniform_bags():
    layer = optimizers.ShardedEmbedding(9, 2, combiner="mean")
    layer.build()
    matrix = tf.constant([[1, 2], [3, 3]])
    np.testing.assert_allclose(layer(matrix).numpy(), layer(tf.ragged.constant([[1, 2], [3, 3]])).numpy())


def test_combiner_config_roundtrip_and_validation():
    layer = optimizers.ShardedEmbedding(9, 2, combiner="sqrtn")
    assert keras.layers.deserialize(keras.layers.serialize(layer)).combiner == "sqrtn"
    with pytest.raises(ValueError, match="combiner.*'max'"):
        optimizers.ShardedEmbedding(9, 2, combiner="max")
    plain = optimizers.ShardedEmbedding(9, 2)
    with pytest.raises(ValueError, match="`weights` need a `combiner`"):
        plain(tf.constant([1]), tf.constant([1.0]))


@pytest.mark.parametrize("n", [2, 3])
def test_the_workers_get_different_id_counts(n):
    """The bags exchange must handle replicas with unequal numbers of ids; the test data makes sure they are."""
    lengths = worker.data()[0].reshape(worker.STEPS, n, worker.GLOBAL_BATCH // n).sum(axis=2)
    assert (lengths != lengths[:, :1]).any()


def reference_bytes(exchange, n):
    """Bytes each worker sends over the run, from the ids alone (NumPy).

    all_to_all: (N - 1) x (W x (8 + 8 dim) + 32) per step, W the widest (worker, owner) count of distinct ids;
    all_gather: the counts gathered, (N - 1) x 12, the ids padded to the longest, (N - 1) x (4 + 8 max c), and
    two ring all-reduces of the [global distinct, dim] float32 block, 2 (N - 1) / N of it each.
    """
    total = 0
    for step in range(worker.STEPS):
        ids = [worker.local_ids(step, t, n) for t in range(n)]
        if exchange == "all_to_all":
            widest = max(max(np.bincount(np.unique(x) % n, minlength=n).max() for x in ids), 1)
            total += (n - 1) * (widest * (8 + 8 * worker.DIM) + 32)
        else:
            distinct = len(np.unique(np.concatenate(ids)))
            total += ((n - 1) * 12 + (n - 1) * (4 + 8 * max(x.size for x in ids))
                      + 2 * (2 * (n - 1) * distinct * worker.DIM * 4 // n))
    return total


@pytest.mark.slow
@pytest.mark.parametrize("n, cases", [(2, CASES), (3, CASES_3)], ids=["2-workers", "3-workers"])
def test_row_sharded_bags_match_one_replica(tmp_path, n, cases):
    run_workers("tests.optimizers.sharded_bag_worker", n, str(tmp_path), *cases, timeout=300)
    for case in cases:
        want = worker.train(tf.distribute.get_strategy(), case, optimizers.SparseEmbedding)
        start = optimizers.RowUniform(-0.5, 0.5, seed=worker.SEED)((worker.VOCAB, worker.DIM)).numpy()
        assert not np.allclose(want["table"], start), f"{case}: training changed nothing"
        for exchange in worker.EXCHANGES:
            for i in range(n):
                got = np.load(tmp_path / f"{case}-{exchange}-worker{i}.npz")
                assert str(got["exchange"]) == exchange
                assert int(got["local_rows"]) == math.ceil(worker.VOCAB / n)
                for key in want:
                    np.testing.assert_allclose(got[key], want[key], rtol=RTOL, atol=ATOL,
                                               err_msg=f"{case} {exchange} worker {i} {key}")
                assert int(got["bytes_sent"]) == reference_bytes(exchange, n), (case, exchange, i)
