"""Under MirroredStrategy (2 logical CPUs) a step equals one replica on the global batch."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tests.optimizers import tiny_model
from tests.optimizers.cases import CASES
from tests.optimizers.helpers import make


def train(strategy, case, **opt_kwargs):
    variables, opt, replica_step = tiny_model.build(strategy, lambda: make(case, **opt_kwargs))

    @tf.function
    def step(batch):
        strategy.run(replica_step, args=batch)

    dataset = tf.data.Dataset.from_tensor_slices(tiny_model.data()).batch(tiny_model.GLOBAL_BATCH)
    for batch in strategy.experimental_distribute_dataset(dataset):
        step(batch)
    replicas = [[t.numpy() for t in strategy.experimental_local_results(v.value)] for v in variables]
    slots = [[t.numpy() for t in strategy.experimental_local_results(v.value)] for v in opt.variables]
    return replicas, slots, int(opt.iterations.numpy())


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("opt_kwargs", [{}, {"clipnorm": 0.05}], ids=["plain", "clipnorm"])
def test_mirrored_matches_single_replica(case, opt_kwargs, mirrored_strategy):
    got_vars, got_slots, got_steps = train(mirrored_strategy, case, **opt_kwargs)
    want_vars, want_slots, want_steps = train(tf.distribute.get_strategy(), case, **opt_kwargs)
    assert got_steps == want_steps == tiny_model.STEPS
    for got, (want,) in zip(got_vars + got_slots, want_vars + want_slots):
        assert len(got) == 2
        # Replicas stay in sync. Not bit for bit: an elementwise kernel (FTRL's
        # pow) may round one ulp differently on each device's thread split.
        np.testing.assert_allclose(got[0], got[1], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-6)
    # The steps moved the table: the comparison is not between two no-ops.
    assert not np.allclose(want_vars[0][0], tiny_model.initial_weights()[0])
