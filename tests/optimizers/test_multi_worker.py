"""Two real worker processes under MultiWorkerMirroredStrategy on localhost.

Each worker feeds half of every global batch; both must end with the same
variables and slots as one replica trained here on the whole global batch.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.optimizers import mwms_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NAMES = ["lazy_adam", "adagrad", "momentum", "ftrl"]


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_match_single_replica(tmp_path):
    workers = [f"127.0.0.1:{p}" for p in free_ports(2)]
    procs = []
    for index in range(2):
        env = dict(os.environ, PYTHONPATH=ROOT,
                   TF_CONFIG=json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tests.optimizers.mwms_worker", str(tmp_path), *NAMES],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        ))
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-3000:]

    x, y = mwms_model.data()
    for name in NAMES:
        variables, opt, replica_step = mwms_model.build(tf.distribute.get_strategy(), name)
        step = tf.function(replica_step)
        for start in range(0, len(x), mwms_model.GLOBAL_BATCH):
            step(tf.constant(x[start:start + mwms_model.GLOBAL_BATCH]),
                 tf.constant(y[start:start + mwms_model.GLOBAL_BATCH]))
        want = [v.numpy() for v in variables] + [v.numpy() for v in opt.variables]
        got = [np.load(tmp_path / f"{name}-worker{i}.npz") for i in range(2)]
        assert int(got[0]["opt0"]) == mwms_model.STEPS  # opt.variables[0] is `iterations`
        for i, expected in enumerate(want):
            key = f"var{i}" if i < len(variables) else f"opt{i - len(variables)}"
            np.testing.assert_array_equal(got[0][key], got[1][key], err_msg=f"{name} {key}: workers differ")
            np.testing.assert_allclose(got[0][key], expected, rtol=1e-5, atol=1e-6, err_msg=f"{name} {key}")
