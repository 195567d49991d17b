"""ShardedDynamicEmbedding (issue 23): a dynamic table split over 2 real workers by key hash.

References, neither of which runs the exchange: the policy state of each
owner against the NumPy `ReferenceTable` fed the global batch's keys that
hash to it (`dynamic_reference.owner`, its own SplitMix64); rows and slots
against one process training two `DynamicEmbedding`s of `capacity / 2` rows,
each key routed to its owner's table, on the global batch.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import optimizers
from optimizers.dynamic import DynamicEmbedding
from optimizers.dynamic_sharded import ShardedDynamicEmbedding, shard_seed
from tests.optimizers.dynamic_reference import ReferenceTable, owner
from tests.optimizers.test_dynamic_embedding import _check_state, _replicated_run, replicated_stream

CAPACITY, SEED, WORKERS = 12, 3, 2
POLICY = dict(admit_after=2, sketch_width=2**10)


def sharded_run(strategy, batches, coefs, eviction):
    """Trains a fresh `ShardedDynamicEmbedding` under `strategy`, the global batches split over its replicas."""
    return _replicated_run(strategy, batches, coefs, eviction, make_layer=lambda e: ShardedDynamicEmbedding(
        3, capacity=CAPACITY, eviction=e, seed=SEED, **POLICY))


def _routed_run(batches, coefs, eviction):
    """One process, one replica: a `DynamicEmbedding` of CAPACITY / WORKERS rows per owner, each key of the global
    batch looked up in its owner's table."""
    tables = [DynamicEmbedding(3, capacity=CAPACITY // WORKERS, eviction=eviction, seed=shard_seed(SEED, r), **POLICY)
              for r in range(WORKERS)]
    for table in tables:
        table.build()
    variables = [v for t in tables for v in t.trainable_variables]
    optimizer = optimizers.LazyAdam(0.05)
    optimizer.build(variables)

    @tf.function
    def step(keys, coef, owners):
        with tf.GradientTape() as tape:
            out = tf.zeros([tf.size(keys), 3])
            for r, table in enumerate(tables):
                at = tf.where(owners == r)
                out = tf.tensor_scatter_nd_update(out, at, table(tf.gather_nd(keys, at), training=True))
            loss = tf.reduce_sum(out * coef)
        grads = tape.gradient(loss, variables)
        for table in tables:
            table.reset_slots(optimizer)
        optimizer.apply_gradients(zip(grads, variables))

    for keys, coef in zip(batches, coefs):
        step(tf.constant(keys), tf.constant(coef), tf.constant([owner(int(k), WORKERS) for k in keys]))
    return tables, optimizer


def test_owner_hash_matches_the_numpy_splitmix():
    from optimizers.dynamic_ops import owner_of

    keys = np.array([0, 1, -1, 2**63 - 1, -2**63, 12345678901234, -987654321] + list(range(100)), np.int64)
    for n in (2, 3, 4, 64):
        np.testing.assert_array_equal(owner_of(tf.constant(keys), n).numpy(), [owner(int(k), n) for k in keys])
    spread = np.bincount(owner_of(tf.constant(np.arange(10_000, dtype=np.int64) * 7919), 4).numpy(), minlength=4)
    assert spread.min() > 2300  # about a quarter each


def test_one_worker_is_a_dynamic_embedding():
    batches, coefs = replicated_stream()
    layer, _ = sharded_run(tf.distribute.get_strategy(), batches, coefs, "lru")
    ref = ReferenceTable(CAPACITY, eviction="lru", **POLICY)
    for keys in batches:
        ref.train(keys)
    _check_state(layer, ref)
    assert layer.spec.num_shards == 1 and layer.bytes_sent == 0


def test_a_shared_default_row_is_refused():
    with pytest.raises(ValueError, match="`default` must be 'zeros'"):
        ShardedDynamicEmbedding(3, capacity=8, default="shared_row")


@pytest.mark.slow
@pytest.mark.parametrize("eviction", ["lru", "lfu"])
def test_two_workers_each_hold_their_keys_like_a_table_per_owner(eviction, tmp_path):
    from tests.optimizers.worker_processes import run_workers

    run_workers("tests.optimizers.dynamic_worker", WORKERS, str(tmp_path), eviction, "sharded", timeout=300)
    batches, coefs = replicated_stream()
    tables, optimizer = _routed_run(batches, coefs, eviction)
    refs = [ReferenceTable(CAPACITY // WORKERS, eviction=eviction, **POLICY) for _ in range(WORKERS)]
    for keys in batches:
        owners = np.array([owner(int(k), WORKERS) for k in keys])
        for r, ref in enumerate(refs):
            ref.train(keys[owners == r])
    assert sum(ref.evictions for ref in refs) > 0 and all(ref.admissions for ref in refs)
    for r, (table, ref) in enumerate(zip(tables, refs)):
        _check_state(table, ref)  # the routed reference is the policy per owner
        got = np.load(tmp_path / f"{eviction}-sharded-worker{r}.npz")
        counters = table.counters()
        np.testing.assert_array_equal(got["counters"], [counters[k] for k in sorted(counters)])
        assert dict(zip(got["hash_keys"].tolist(), got["hash_rows"].tolist())) == ref.row_of
        for i, variable in enumerate(table.weights):
            if variable.dtype == "int64":
                np.testing.assert_array_equal(got[f"var{i}"], variable.numpy(), err_msg=variable.path)
            else:
                np.testing.assert_allclose(got[f"var{i}"], variable.numpy(), rtol=1e-5, atol=1e-6,
                                           err_msg=variable.path)
        for name in ("m", "v"):
            np.testing.assert_allclose(got["slot:" + name], optimizer.get_slot(table.embeddings, name).numpy(),
                                       rtol=1e-5, atol=1e-6)
        assert int(got["bytes_sent"]) > 0
