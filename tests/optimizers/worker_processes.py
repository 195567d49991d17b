"""Runs a test's worker module as N MultiWorkerMirroredStrategy processes on localhost (TF_CONFIG per process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.optimizers.helpers import ROOT


def run_workers(module: str, num_workers: int, *args: str, timeout: float) -> None:
    """`python -m module *args` in `num_workers` processes of one cluster; asserts every one exits 0.

    Every process is killed when one runs past `timeout` seconds, so a hung
    collective fails the test instead of hanging it.
    """
    from components.trainer.local_workers import free_ports

    workers = [f"127.0.0.1:{p}" for p in free_ports(num_workers)]
    procs = []
    for index in range(num_workers):
        env = dict(os.environ, PYTHONPATH=ROOT,
                   TF_CONFIG=json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [proc.communicate(timeout=timeout)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for index, (proc, out) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"worker {index} of {num_workers}:\n{out[-3000:]}"
