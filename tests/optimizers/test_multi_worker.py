"""Two real worker processes under MultiWorkerMirroredStrategy on localhost.

Each worker feeds half of every global batch; both must end with the same
variables and slots as one replica trained here on the whole global batch.
"""

from __future__ import annotations


import numpy as np
import pytest
import tensorflow as tf

import optimizers
from tests.optimizers.helpers import run_two_workers
from tests.optimizers import tiny_model

NAMES = ["lazy_adam", "adagrad", "momentum", "ftrl"]


@pytest.mark.slow
def test_two_workers_match_single_replica(tmp_path):
    run_two_workers("tests.optimizers.mwms_worker", str(tmp_path), *NAMES, timeout=240)

    x, y = tiny_model.data()
    for name in NAMES:
        variables, opt, replica_step = tiny_model.build(
            tf.distribute.get_strategy(), lambda: optimizers.get(name, learning_rate=0.05, clipnorm=0.5)
        )
        step = tf.function(replica_step)
        for start in range(0, len(x), tiny_model.GLOBAL_BATCH):
            step(tf.constant(x[start:start + tiny_model.GLOBAL_BATCH]),
                 tf.constant(y[start:start + tiny_model.GLOBAL_BATCH]))
        want = [v.numpy() for v in variables] + [v.numpy() for v in opt.variables]
        got = [np.load(tmp_path / f"{name}-worker{i}.npz") for i in range(2)]
        assert int(got[0]["opt0"]) == tiny_model.STEPS  # opt.variables[0] is `iterations`
        for i, expected in enumerate(want):
            key = f"var{i}" if i < len(variables) else f"opt{i - len(variables)}"
            # Workers in sync, up to one ulp of an elementwise kernel's rounding.
            np.testing.assert_allclose(got[0][key], got[1][key], rtol=1e-6, atol=1e-7,
                                       err_msg=f"{name} {key}: workers differ")
            np.testing.assert_allclose(got[0][key], expected, rtol=1e-5, atol=1e-6, err_msg=f"{name} {key}")
