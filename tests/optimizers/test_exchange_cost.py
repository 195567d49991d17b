"""`optimizers.exchange_cost`: the per-step byte count of both exchanges, by hand, and its prediction."""

from __future__ import annotations

import numpy as np
import pytest

from optimizers import exchange_cost


def test_all_to_all_bytes_by_hand():
    # N = 2, dim 3. Worker 0 asks owner 0 for {0, 2, 4} and owner 1 for {1}; worker 1 asks {6} and {1, 3}.
    ids = [np.array([0, 2, 4, 4, 1]), np.array([6, 1, 3, 1])]
    assert exchange_cost.all_to_all_width(ids) == 3
    # (N - 1) x (W x (8 ids + 4 x 3 rows + 4 x 3 gradients) + 32)
    np.testing.assert_array_equal(exchange_cost.step_bytes("all_to_all", ids, 3), [1 * (3 * 32 + 32)] * 2)


def test_all_gather_bytes_by_hand():
    ids = [np.array([0, 2, 4, 4, 1]), np.array([6, 1, 3, 1, 1])]
    distinct = 6  # {0, 1, 2, 3, 4, 6}
    block = 2 * 1 * distinct * 3 * 4 // 2  # ring all-reduce of [6, 3] float32 over 2 workers
    np.testing.assert_array_equal(exchange_cost.step_bytes("all_gather", ids, 3), [4 + 8 * 5 + 2 * block] * 2)
    # Bags: the counts are gathered and the ids padded to the longest worker's.
    bags = [np.array([0, 1]), np.array([5, 6, 7])]
    want = 12 + 4 + 8 * 3 + 2 * (2 * 5 * 3 * 4 // 2)
    np.testing.assert_array_equal(exchange_cost.step_bytes("all_gather", bags, 3, bags=True), [want] * 2)


def test_one_worker_sends_nothing():
    for kind in ("all_to_all", "all_gather"):
        assert exchange_cost.step_bytes(kind, [np.arange(10)], 8).tolist() == [0]


def test_prediction_grows_with_n_for_all_gather_only():
    sample = exchange_cost.zipf_sampler(100_000)
    a2a = [exchange_cost.predicted_bytes_per_worker("all_to_all", n, 16, 2000, sample) for n in (2, 4, 16)]
    ag = [exchange_cost.predicted_bytes_per_worker("all_gather", n, 16, 2000, sample) for n in (2, 4, 16)]
    assert ag[2] > 4 * ag[0]  # the global batch grows 8x
    # all_to_all: (N - 1)/N of the local batch plus padding, bounded well below all_gather's growth.
    assert a2a[2] < 2.5 * a2a[0]
    assert all(a < g for a, g in zip(a2a, ag))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="kind"):
        exchange_cost.step_bytes("ring", [np.arange(3)] * 2, 4)
    with pytest.raises(ValueError, match="num_workers"):
        exchange_cost.predicted_bytes_per_worker("all_to_all", 0, 4, 10, exchange_cost.zipf_sampler(10))


def test_table_wise_and_data_parallel_bytes_by_hand():
    # N = 2, dim 3. Worker 0 has 4 distinct ids {0, 1, 2, 4}, worker 1 three {1, 3, 6}: all go to the owner.
    ids = [np.array([0, 2, 4, 4, 1]), np.array([6, 1, 3, 1])]
    np.testing.assert_array_equal(exchange_cost.step_bytes("all_to_all", ids, 3, placement="table_wise"),
                                  [1 * (4 * 32 + 32)] * 2)
    # all_gather: the owner changes who answers, not what moves.
    np.testing.assert_array_equal(exchange_cost.step_bytes("all_gather", ids, 3, placement="table_wise"),
                                  exchange_cost.step_bytes("all_gather", ids, 3))
    # data_parallel: the IndexedSlices gradient gathered: (N - 1) x (8 + c x (8 + 4 x 3)), c the worker's ids.
    np.testing.assert_array_equal(exchange_cost.step_bytes("all_to_all", ids, 3, placement="data_parallel"),
                                  [8 + 5 * 20, 8 + 4 * 20])
    with pytest.raises(ValueError, match="placement"):
        exchange_cost.step_bytes("all_to_all", ids, 3, placement="column_wise")
