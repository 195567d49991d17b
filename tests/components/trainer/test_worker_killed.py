"""Issue 22 item 1: a local worker killed with kill -9 ends the run in one line per process, no traceback.

The surviving worker's collective operation is aborted; it used to print TensorFlow's traceback before the
launcher's last line. Workers now run through `components.cli`, which reports that abort in one line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.components.trainer.test_launcher_killed import START_SECONDS, _pids_and_progress
from tests.components.trainer.test_multi_process import ENV, ROOT, kill_leftovers

END_SECONDS = 120


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal and /proc are Linux only")
def test_a_killed_worker_ends_the_run_without_a_traceback(planted_data, tmp_path):
    cmd = [sys.executable, "-m", "components.cli", "train", "--data", planted_data, "--output", str(tmp_path / "out"),
           "--train-steps", "1000000", "--batch-size", "64", "--embedding-dim", "8", "--bottom-mlp", "16",
           "--top-mlp", "16", "--checkpoint-every", "1000000", "--log-every", "5", "--eval-steps", "1",
           "--local-workers", "2"]
    launcher = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, pids, stepping = [], {}, set()
    reader = threading.Thread(target=_pids_and_progress, args=(launcher, lines, pids, stepping), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + START_SECONDS
        while not stepping and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(pids) == 2 and stepping, "".join(lines[-40:])
        os.kill(pids["1"], signal.SIGKILL)
        launcher.wait(timeout=END_SECONDS)
        reader.join(timeout=10)
    finally:
        kill_leftovers(launcher, pids.values())
    output = "".join(lines)
    assert launcher.returncode != 0
    assert "Traceback" not in output, output[-4000:]
    assert lines[-1].startswith("embedopt train: worker 1 failed with exit code -9"), output[-2000:]
    # Worker 0, if it saw the abort before the launcher stopped it, said so in one line.
    said = [line for line in lines if line.startswith("[worker 0] embedopt train:")]
    assert all("another worker stopped or cannot be reached" in line for line in said), said
