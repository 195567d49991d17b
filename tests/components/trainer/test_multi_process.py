"""Real processes: two local workers under MultiWorkerMirroredStrategy, and kill -9 then resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from components.quiet import is_native_noise

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
ENV.pop("TF_CONFIG", None)


def train_cmd(data, out, steps, *extra):
    return [sys.executable, "-m", "components.trainer.cli", "--data", data, "--output", out, "--train-steps", str(steps),
            "--batch-size", "64", "--embedding-dim", "8", "--bottom-mlp", "16", "--top-mlp", "16",
            "--learning-rate", "0.003", "--no-progress", "--json", *extra]


def summaries(output: str) -> dict[str, dict]:
    """The final JSON line of each worker (prefix "[worker i] ") or of a single process ("")."""
    found = {}
    for line in output.splitlines():
        prefix, _, rest = line.partition("embedopt train: {")
        if rest:
            found[prefix.strip()] = json.loads("{" + rest)
    return found


@pytest.mark.slow
def test_two_local_workers_finish_in_sync_with_equal_weights(planted_data, tmp_path):
    out = str(tmp_path / "out")
    proc = subprocess.run(train_cmd(planted_data, out, 20, "--local-workers", "2", "--checkpoint-every", "10"),
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    found = summaries(proc.stdout)
    assert set(found) == {"[worker 0]", "[worker 1]"}, proc.stdout[-3000:]
    w0, w1 = found["[worker 0]"], found["[worker 1]"]
    assert w0["strategy"] == w1["strategy"] == "MultiWorkerMirroredStrategy"
    assert w0["num_workers"] == w1["num_workers"] == 2
    assert w0["steps"] == w1["steps"] == 20
    # Mirrored variables after identical all-reduced updates: equal on both workers,
    # up to float32 summation order in the checksum itself.
    np.testing.assert_allclose(w0["weights_checksum"], w1["weights_checksum"], rtol=1e-6, atol=1e-6)
    assert w0["eval_auc"] == pytest.approx(w1["eval_auc"])
    # Quiet output: no TensorFlow start-up lines, progress and the report from worker 0 only.
    lines = (proc.stdout + proc.stderr).splitlines()
    assert not [line for line in lines if is_native_noise(line.split("] ", 1)[-1])], proc.stdout[-3000:]
    assert not [line for line in lines if line.startswith("[worker 1] step ")]
    assert sum(line.startswith("[worker 0] embedopt train: step 20 reached") for line in lines) == 1
    assert not [line for line in lines if "INFO:tensorflow" in line or "Collective all_reduce" in line]
    # Only the chief wrote artifacts.
    with open(os.path.join(out, "model_run", "metrics.json"), encoding="utf-8") as f:
        assert json.load(f)["steps"] == 20
    assert os.path.exists(os.path.join(out, "serving_model", "saved_model.pb"))


@pytest.mark.slow
def test_failed_worker_is_named_and_the_launcher_fails(tmp_path):
    cmd = train_cmd(str(tmp_path / "missing"), str(tmp_path / "out"), 5, "--local-workers", "2", "--eval-steps", "1")
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "[worker 0] embedopt train: train_files: no files match" in proc.stdout or \
        "[worker 1] embedopt train: train_files: no files match" in proc.stdout
    assert "failed with exit code 2" in proc.stdout


@pytest.mark.slow
def test_kill_9_then_restart_resumes_with_exact_step_count(planted_data, tmp_path):
    out = str(tmp_path / "out")
    steps, every = 1500, 25
    cmd = train_cmd(planted_data, out, steps, "--checkpoint-every", str(every))
    state_file = os.path.join(out, "model_run", "checkpoints", "checkpoint")
    first = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not os.path.exists(state_file) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL, "the first run finished before it could be killed"
    assert not os.path.exists(os.path.join(out, "model_run", "metrics.json"))

    second = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-4000:]
    summary = summaries(second.stdout)[""]
    assert summary["resumed_from_step"] > 0 and summary["resumed_from_step"] % every == 0
    assert summary["steps"] == steps
    with open(os.path.join(out, "model_run", "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    assert metrics["steps"] == steps and metrics["steps_this_run"] == steps - metrics["resumed_from_step"]


def _running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a dead worker not yet reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pids, seconds: float) -> list[int]:
    """Polls until none of `pids` runs or `seconds` pass; returns those still running."""
    gone_by = time.monotonic() + seconds
    while any(_running(pid) for pid in pids) and time.monotonic() < gone_by:
        time.sleep(0.1)
    return [pid for pid in pids if _running(pid)]


def kill_leftovers(launcher: subprocess.Popen, pids) -> None:
    """After a test: no launcher or worker may outlive it, whatever the test saw."""
    if launcher.poll() is None:
        launcher.kill()
    for pid in pids:
        if _running(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_to_the_launcher_stops_its_workers(planted_data, tmp_path):
    cmd = train_cmd(planted_data, str(tmp_path / "out"), 100_000, "--local-workers", "2", "--log-every", "5",
                    "--eval-steps", "1")
    launcher = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pids, lines = {}, []
    try:
        deadline = time.monotonic() + 240
        # Wait until the workers are training (a step line from worker 0, which only logs progress; its steps are
        # collectives with worker 1), so they sit in collectives when stopped.
        stepping = set()
        while not stepping and time.monotonic() < deadline:
            line = launcher.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "started worker" in line:
                pids[line.split("started worker ")[1].split()[0]] = int(line.rsplit("pid ", 1)[1].rstrip(")\n"))
            if line.startswith("[worker ") and " step " in line:
                stepping.add(line[:10])
        assert len(pids) == 2 and stepping == {"[worker 0]"}, "".join(lines[-40:])
        assert all(_running(pid) for pid in pids.values())
        launcher.send_signal(signal.SIGTERM)
        code = launcher.wait(timeout=15)
        rest = launcher.stdout.read()
        left_running = wait_gone(pids.values(), 5)
    finally:
        kill_leftovers(launcher, pids.values())
    assert not left_running, f"workers {left_running} outlived the launcher"
    assert code == 128 + signal.SIGTERM, rest[-2000:]
    assert "received SIGTERM; stopped the workers" in rest


def test_stop_workers_sigkills_a_worker_that_ignores_sigterm_after_the_grace_period():
    from components.trainer.local_workers import stop_workers

    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                                 "print('ready', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert stubborn.stdout.readline() == "ready\n"
        start = time.monotonic()
        stop_workers([stubborn, polite], grace_seconds=1.0)
        elapsed = time.monotonic() - start
    finally:
        for p in (stubborn, polite):
            if p.poll() is None:
                p.kill()
    assert polite.returncode == -signal.SIGTERM and stubborn.returncode == -signal.SIGKILL
    assert 1.0 <= elapsed < 5
