"""Bags under MirroredStrategy (two logical CPUs) and MultiWorkerMirroredStrategy (two real worker processes),
with mirrored and row-sharded tables: the same result as one replica on the global batch."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import tensorflow as tf

from components.trainer.model import build_model
from tests.components.trainer import bag_training as bags
from tests.components.trainer.bag_worker import parse_case
from tests.optimizers.helpers import run_two_workers

# One worker run covers: mirrored tables, and row-sharded ones with the shared table (every feature's bags in
# one exchange) and with a table per feature (bag tables beside one-hot ones); Adagrad and LazyAdam.
WORKER_CASES = ["mirrored:shared:adagrad", "row:shared:lazy_adam", "row:per_feature:adagrad"]


def _assert_trained(model, config):
    """The tables moved: a run that trained nothing would pass the comparisons too."""
    fresh = build_model(bags.metadata(), config)
    for trained, start in zip(model.embedding_variables(), fresh.embedding_variables()):
        assert not np.allclose(trained.numpy(), start.numpy())


@pytest.mark.parametrize("layout,optimizer", [("shared", "adagrad"), ("per_feature", "lazy_adam")])
def test_mirrored_two_cpus_matches_one_replica_on_bags(mirrored_strategy, layout, optimizer):
    data = bags.rows()
    config = bags.config(table_layout=layout, optimizer=optimizer)
    losses1, single, _ = bags.train(tf.distribute.OneDeviceStrategy("/cpu:0"), data, config)
    losses2, mirrored, _ = bags.train(mirrored_strategy, data, config)
    _assert_trained(single, config)
    np.testing.assert_allclose(losses2, losses1, rtol=1e-5)
    for got, want in zip(mirrored.trainable_variables, single.trainable_variables):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=bags.RTOL, atol=bags.ATOL, err_msg=got.name)


@pytest.mark.slow
def test_two_workers_match_one_replica_on_bags(tmp_path):
    run_two_workers("tests.components.trainer.bag_worker", str(tmp_path), *WORKER_CASES, timeout=300)
    data = bags.rows()
    for case in WORKER_CASES:
        config = parse_case(case)
        one_replica = dataclasses.replace(config, table_sharding="mirrored")
        losses, single, _ = bags.train(tf.distribute.get_strategy(), data, one_replica)
        _assert_trained(single, one_replica)
        workers = [np.load(tmp_path / f"{case}-worker{i}.npz") for i in range(2)]
        for worker in workers:
            np.testing.assert_allclose(worker["losses"], losses, rtol=1e-5, err_msg=case)
            for i, want in enumerate(single.trainable_variables):
                np.testing.assert_allclose(worker[f"var{i}"], want.numpy(), rtol=bags.RTOL, atol=bags.ATOL,
                                           err_msg=f"{case} {want.name}")
        if config.table_sharding == "row":
            # Each worker held half of every table's rows (rounded up).
            rows = [sum(bags.SIZES.values())] if config.table_layout == "shared" else list(bags.SIZES.values())
            for worker in workers:
                assert list(worker["local_rows"]) == [math.ceil(r / 2) for r in rows]
