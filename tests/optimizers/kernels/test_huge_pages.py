"""Tables of 16 MB and more are advised onto 2 MB pages (common.h AdviseHugePages): values must not move.

The advice (MADV_HUGEPAGE, then MADV_COLLAPSE, which copies the pages
already there into huge ones) runs the first time a kernel sees such a
buffer. These tests use a table above the threshold and check every row
against NumPy after a lookup and an apply, so a collapse that lost or moved
data would fail them.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from optimizers.kernels import ops as kops

pytestmark = pytest.mark.usefixtures("kernel_ops")
ROWS, WIDTH = 160_000, 32  # 20.5 MB per array, above the 16 MB threshold


def test_large_table_lookup_and_adagrad_apply_match_numpy():
    rng = np.random.default_rng(7)
    table0 = rng.standard_normal((ROWS, WIDTH)).astype(np.float32)
    acc0 = np.full((ROWS, WIDTH), 0.1, np.float32)
    table, acc = tf.Variable(table0), tf.Variable(acc0)
    ids = np.array([0, ROWS - 1, 5, 5, 123_457, 99_999, 0], np.int64)
    pooled = kops.pooled_lookup(table, tf.constant(ids.reshape(-1, 1)))
    np.testing.assert_array_equal(pooled.numpy(), table0[ids])
    grads = rng.standard_normal((len(ids), WIDTH)).astype(np.float32)
    kops.sparse_apply(table, [acc], tf.constant(ids), tf.constant(grads), "adagrad", [0.1, 1e-7])
    want_var, want_acc = table0.astype(np.float64), acc0.astype(np.float64)
    for row in np.unique(ids):
        g = grads[ids == row].sum(axis=0).astype(np.float64)
        want_acc[row] += g * g
        want_var[row] -= 0.1 * g / np.sqrt(want_acc[row] + 1e-7)
    np.testing.assert_allclose(acc.numpy(), want_acc, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(table.numpy(), want_var, rtol=1e-5, atol=1e-6)
    # A second apply on the same (now advised) buffers keeps working on the right rows.
    kops.sparse_apply(table, [acc], tf.constant([1], tf.int64), tf.ones([1, WIDTH]), "adagrad", [0.1, 1e-7])
    np.testing.assert_allclose(acc.numpy()[1], want_acc[1] + 1.0, rtol=1e-6)
    untouched = np.setdiff1d(np.arange(ROWS), np.append(ids, 1))
    np.testing.assert_array_equal(table.numpy()[untouched], table0[untouched])


def _thp_mode():
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return None
    return text[text.index("[") + 1:text.index("]")] if "[" in text else None


def _huge_kb_after_lookup(setting):
    code = (
        "import tensorflow as tf\n"
        "from optimizers.kernels import ops\n"
        "t = tf.Variable(tf.ones([160000, 32]))\n"
        "ops.pooled_lookup(t, tf.constant([[1]], tf.int64))\n"
        "print(next(int(l.split()[1]) for l in open('/proc/self/smaps_rollup') if l.startswith('AnonHugePages:')))\n"
    )
    env = {**os.environ, "EMBEDOPT_HUGE_PAGES": setting}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                         cwd=str(Path(__file__).resolve().parents[3]))
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.strip().splitlines()[-1])


def test_switched_off_advises_nothing():
    # Under THP "madvise" (the common default) only advised memory gets huge pages, so with the advice
    # switched off none appear; under "always" every large heap may get them, and the off switch cannot show.
    if _thp_mode() != "madvise" or not Path("/proc/self/smaps_rollup").exists():
        pytest.skip(f"transparent huge pages are {_thp_mode()!r} here, not 'madvise'")
    assert _huge_kb_after_lookup("off") == 0
