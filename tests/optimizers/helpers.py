"""Small drivers shared by the optimizer tests (no update math here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import tensorflow as tf

import optimizers


def make(case, **overrides):
    kwargs = dict(case.kwargs, learning_rate=case.lr)
    kwargs.update(overrides)
    return optimizers.get(case.get_name, **kwargs)


def sparse_grad(indices, values, num_rows):
    values = np.asarray(values, np.float32)
    return tf.IndexedSlices(
        tf.constant(values), tf.constant(indices, tf.int64), tf.constant((num_rows,) + values.shape[1:], tf.int64)
    )


def apply_steps(opt, var_init, grads, use_function=True):
    """Applies `grads` (one per step) to a fresh variable; returns it."""
    var = keras.Variable(np.asarray(var_init, np.float32), name="table")
    opt.build([var])

    def step(g):
        opt.apply_gradients([(g, var)])

    fn = tf.function(step) if use_function else step
    for g in grads:
        fn(g)
    return var


def slot_values(opt, var, case):
    return {name: opt.get_slot(var, name).numpy() for name in case.slots}


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_two_workers(module: str, *args: str, timeout: float) -> None:
    """Runs `python -m module *args` as 2 MultiWorkerMirroredStrategy workers on localhost; asserts both succeed."""
    from components.trainer.local_workers import free_ports

    workers = [f"127.0.0.1:{p}" for p in free_ports(2)]
    procs = []
    for index in range(2):
        env = dict(os.environ, PYTHONPATH=ROOT,
                   TF_CONFIG=json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-3000:]
