"""table_wise tables (`TableWiseEmbedding`): the whole table on one worker == one replica, with real workers."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import optimizers
from optimizers.sharded import shard_spec
from tests.optimizers import sharded_worker
from tests.optimizers.worker_processes import run_workers

# Every optimizer embedopt has, by name: a quick check at the tiny sizes of `sharded_worker`.
CASES = list(optimizers.OPTIMIZERS)
# Float32 state after 5 steps; the exchanged gradients are summed in another order than one replica's dedup.
RTOL, ATOL = 1e-5, 1e-7


def test_single_worker_holds_the_whole_table_and_trains_like_sparse_embedding():
    init = optimizers.RowUniform(-0.5, 0.5, seed=2)
    table = optimizers.TableWiseEmbedding(7, 3, owner=0, embeddings_initializer=init)
    table.build()
    assert table.embeddings.shape == (7, 3) and shard_spec(table.embeddings).owner == 0
    np.testing.assert_array_equal(table(tf.constant([6, 0])).numpy(), init((7, 3)).numpy()[[6, 0]])


@pytest.mark.parametrize("owner", [-1, True, 1.5])
def test_bad_owner_is_refused(owner):
    with pytest.raises(ValueError, match="owner"):
        optimizers.TableWiseEmbedding(7, 3, owner=owner)


def test_config_roundtrip():
    table = optimizers.TableWiseEmbedding(7, 3, owner=2, exchange="all_gather", name="t")
    again = keras.layers.deserialize(keras.layers.serialize(table))
    assert isinstance(again, optimizers.TableWiseEmbedding) and again.owner == 2 and again.exchange == "all_gather"


@pytest.mark.slow
@pytest.mark.parametrize("n, owner, cases", [(2, 1, CASES), (4, 2, ["sgd"])], ids=["2-workers", "4-workers"])
def test_table_wise_matches_one_replica(tmp_path, n, owner, cases):
    """Both exchanges, every optimizer on 2 workers (sgd on 4): the owner's table and slots, every worker's head,
    equal one replica's on the global batch; the other workers hold no rows."""
    run_workers("tests.optimizers.table_wise_worker", n, str(tmp_path), str(owner), *cases, timeout=540)

    def check_worker(case, exchange, i, got):
        assert int(got["local_rows"]) == (sharded_worker.VOCAB if i == owner else 0)
        assert int(got["bytes_sent"]) == sharded_worker.reference_bytes(exchange, n, owner), (case, exchange, i)

    sharded_worker.assert_workers_match_one_replica(str(tmp_path), n, cases, RTOL, ATOL, check_worker)
