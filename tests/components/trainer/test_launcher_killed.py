"""Issue 11 item 1: `--local-workers` workers die with their launcher, also when it is killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.components.trainer.test_multi_process import ENV, ROOT, _running, kill_leftovers, wait_gone

# Bounds, not tuned delays: each wait polls and ends as soon as its condition holds.
START_SECONDS = 240
GONE_SECONDS = 30


def _pids_and_progress(launcher: subprocess.Popen, lines: list[str], pids: dict[str, int], stepping: set[str]) -> None:
    """Reads the launcher's output until it closes: worker pids and which workers logged a training step."""
    for line in iter(launcher.stdout.readline, ""):
        lines.append(line)
        if "started worker" in line:
            pids[line.split("started worker ")[1].split()[0]] = int(line.rsplit("pid ", 1)[1].rstrip(")\n"))
        if line.startswith("[worker ") and " step " in line:
            stepping.add(line[:10])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal and /proc are Linux only")
def test_kill_9_of_the_launcher_kills_its_workers(planted_data, tmp_path):
    out = str(tmp_path / "out")
    cmd = [sys.executable, "-m", "components.cli", "train", "--data", planted_data, "--output", out,
           "--train-steps", "1000000", "--batch-size", "64", "--embedding-dim", "8", "--bottom-mlp", "16",
           "--top-mlp", "16", "--checkpoint-every", "5", "--log-every", "5", "--eval-steps", "1",
           "--local-workers", "2"]
    launcher = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, pids, stepping = [], {}, set()
    reader = threading.Thread(target=_pids_and_progress, args=(launcher, lines, pids, stepping), daemon=True)
    reader.start()
    checkpoint_state = os.path.join(out, "model_run", "checkpoints", "checkpoint")
    left_running = []
    try:
        # Past strategy set-up on both workers: each logged a step, and the chief wrote a checkpoint.
        deadline = time.monotonic() + START_SECONDS
        while not (stepping and os.path.exists(checkpoint_state)) and launcher.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(pids) == 2 and stepping == {"[worker 0]"} and os.path.exists(checkpoint_state), "".join(lines[-40:])
        assert all(_running(pid) for pid in pids.values())

        launcher.send_signal(signal.SIGKILL)
        launcher.wait(timeout=GONE_SECONDS)
        left_running = wait_gone(pids.values(), GONE_SECONDS)
    finally:
        kill_leftovers(launcher, pids.values())
    assert not left_running, f"workers {left_running} outlived the launcher killed with SIGKILL"
    assert launcher.returncode == -signal.SIGKILL
