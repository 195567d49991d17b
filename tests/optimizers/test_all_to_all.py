"""The ragged all-to-all exchange (`optimizers.all_to_all`): NumPy references, bytes per worker, real workers."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf

from optimizers import all_to_all
from tests.optimizers import all_to_all_worker as w
from tests.optimizers import worker_processes

WORKER_TIMEOUT_S = 150  # a hung collective fails its worker after w.TIMEOUT_S; this bounds everything else


def run_workers(n: int, out_dir: str) -> list[dict]:
    """Runs n `all_to_all_worker`s under MultiWorkerMirroredStrategy on localhost; returns their saved arrays."""
    worker_processes.run_workers("tests.optimizers.all_to_all_worker", n, out_dir, timeout=WORKER_TIMEOUT_S)
    return [dict(np.load(os.path.join(out_dir, f"worker{i}.npz"))) for i in range(n)]


# -- NumPy references (no import of the implementation) -------------------------------------------------


def reference_exchange(n):
    """Per destination: the rows, counts per source and the gradient each source gets back."""
    counts = np.stack([w.send_counts(s, n) for s in range(n)])  # [source, destination]
    starts = np.cumsum(counts, axis=1) - counts
    received = [np.concatenate([w.block(s, n)[starts[s, d]:starts[s, d] + counts[s, d]] for s in range(n)])
                for d in range(n)]
    grads = []
    for s in range(n):
        parts = []
        for d in range(n):
            offset = counts[:s, d].sum()  # where source s's rows land on d
            parts.append(w.loss_weights(d, counts[:, d].sum())[offset:offset + counts[s, d]])
        grads.append(np.concatenate(parts))
    return counts, received, grads


def reference_lookup(n):
    """Rows of each worker's ids, each owner's dense shard gradient, and the widest (sender, owner) id count."""
    local_rows = -(-w.VOCAB // n)
    shard_grads = np.zeros((n, local_rows, w.DIM), np.float32)
    widest = 0
    for t in range(n):
        ids = w.batch_ids(t)
        np.add.at(shard_grads, (ids % n, ids // n), w.row_weights(t))
        widest = max(widest, np.bincount(np.unique(ids) % n, minlength=n).max())
    return shard_grads, widest


@pytest.fixture(scope="module", params=[2, 3], ids=["2-workers", "3-workers"])
def workers(request, tmp_path_factory):
    n = request.param
    return n, run_workers(n, str(tmp_path_factory.mktemp(f"a2a{n}")))


# -- real workers -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_ragged_blocks_reach_their_destinations(workers):
    n, got = workers
    counts, received, _ = reference_exchange(n)
    for d in range(n):
        np.testing.assert_array_equal(got[d]["received_counts"], counts[:, d])
        np.testing.assert_array_equal(got[d]["received"], received[d])


@pytest.mark.slow
def test_gradient_runs_the_exchange_backwards(workers):
    n, got = workers
    _, _, grads = reference_exchange(n)
    for s in range(n):
        # Each gradient entry is one product of exact float32 inputs: equal to rounding.
        np.testing.assert_allclose(got[s]["grad"], grads[s], rtol=1e-6, err_msg=f"worker {s}")


@pytest.mark.slow
def test_lookup_returns_rows_and_owner_gets_every_workers_gradient(workers):
    n, got = workers
    shard_grads, _ = reference_lookup(n)
    for t in range(n):
        np.testing.assert_allclose(got[t]["rows"], w.table_rows(w.batch_ids(t)), rtol=1e-6)
        # Sums of up to a few float32 terms in another order: a few ulps.
        np.testing.assert_allclose(got[t]["shard_grad"], shard_grads[t], rtol=1e-5, atol=1e-6, err_msg=f"owner {t}")


@pytest.mark.slow
def test_bytes_sent_follow_the_padded_widths(workers):
    n, got = workers
    counts, _, _ = reference_exchange(n)
    _, widest = reference_lookup(n)
    for t in range(n):
        assert int(got[t]["bytes_sent"]) == (n - 1) * (counts.max() * w.WIDTH * 4 + 16)
        # ids out (int64) and rows back (float32 x DIM), each padded to the widest (sender, owner) pair.
        assert int(got[t]["lookup_bytes"]) == (n - 1) * (widest * (8 + 4 * w.DIM) + 32)


def test_bytes_per_worker_follow_the_local_batch_not_the_global_one():
    """Same local batch on 2 and 3 workers: each sends at most its own distinct ids and rows, plus padding.

    Today's all-gather exchange sends about (N - 1) x (8 + 8 dim) x local bytes (ring all-gather of the ids,
    ring all-reduce of an N x local block), which doubles from N = 2 to 3.
    """
    per_pair = 8 + 4 * w.DIM
    sent = {}
    for n in (2, 3):
        _, widest = reference_lookup(n)
        sent[n] = (n - 1) * (widest * per_pair + 32)
        local = max(len(np.unique(w.batch_ids(t))) for t in range(n))
        assert sent[n] <= 1.1 * local * per_pair, (n, sent[n], local * per_pair)
    assert sent[3] <= 1.5 * sent[2], sent  # (N - 1) / N of the batch leaves the worker: 2/3 over 1/2 plus padding


# -- in one process -----------------------------------------------------------------------------------


def test_exchange_kind_prefers_all_to_all_and_honours_the_fallback(monkeypatch):
    monkeypatch.delenv(all_to_all.EXCHANGE_ENV, raising=False)
    assert all_to_all.exchange_kind() == all_to_all.ALL_TO_ALL  # TF 2.21 has CollectiveAllToAllV2
    monkeypatch.setenv(all_to_all.EXCHANGE_ENV, all_to_all.ALL_GATHER)
    assert all_to_all.exchange_kind() == all_to_all.ALL_GATHER
    with pytest.raises(ValueError, match="ring"):
        all_to_all.exchange_kind("ring")


def test_pad_and_unpad_round_trip_ragged_rows():
    values = np.arange(12, dtype=np.float32).reshape(6, 2)
    counts = np.array([2, 0, 4])
    padded = all_to_all.pad_by_destination(tf.constant(values), tf.constant(counts, tf.int64),
                                           tf.constant(4, tf.int64), 3).numpy()
    want = np.zeros((3, 4, 2), np.float32)
    want[0, :2], want[2, :4] = values[:2], values[2:]
    np.testing.assert_array_equal(padded, want)
    back = all_to_all.unpad_by_source(tf.constant(padded), tf.constant(counts, tf.int64), tf.constant(4, tf.int64))
    np.testing.assert_array_equal(back.numpy(), values)


def test_mirrored_local_replicas_exchange_without_deadlock():
    """Two logical CPUs in this process: the ordering tokens keep the replicas' collectives apart."""
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    assert len(devices) == 2, "tests/conftest.py must split the CPU into 2 logical devices"
    strategy = tf.distribute.MirroredStrategy(devices)
    exchange = all_to_all.AllToAll(strategy, timeout_s=30)
    sends = [np.array([1, 3]), np.array([2, 2])]
    blocks = [np.arange(8, dtype=np.float32).reshape(4, 2) + 100 * r for r in range(2)]

    @tf.function
    def step():
        def replica():
            r = tf.distribute.get_replica_context().replica_id_in_sync_group
            values = tf.gather(tf.constant(np.stack(blocks)), r)
            counts = tf.gather(tf.constant(np.stack(sends), tf.int64), r)
            return exchange(values, counts).values

        return strategy.experimental_local_results(strategy.run(replica))

    got = [t.numpy() for t in step()]
    np.testing.assert_array_equal(got[0], np.concatenate([blocks[0][:1], blocks[1][:2]]))
    np.testing.assert_array_equal(got[1], np.concatenate([blocks[0][1:], blocks[1][2:]]))
