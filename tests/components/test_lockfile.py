"""One writer per output (issue 11, item 4): the lock file, its stale detection, and preprocess under it."""

import json
import os
import socket
import subprocess
import sys

import pytest

from components.lockfile import LockedError, OutputLock, lock_beside
from components.preprocess import pipeline
from tests.components.preprocess.helpers import FIXTURE


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_second_holder_is_refused_with_the_owner(tmp_path):
    path = str(tmp_path / "lock")
    with OutputLock(path, "output 'x'"):
        with pytest.raises(LockedError, match=f"in use by another run \\(process {os.getpid()} on "):
            OutputLock(path, "output 'x'").acquire()
        assert json.load(open(path))["pid"] == os.getpid()
    assert not os.path.exists(path)


def test_a_stale_lock_of_a_dead_process_is_replaced(tmp_path, caplog):
    path = tmp_path / "lock"
    dead = _dead_pid()
    path.write_text(json.dumps({"pid": dead, "host": socket.gethostname(), "started": "then"}))
    with OutputLock(str(path), "output"):
        assert json.load(open(path))["pid"] == os.getpid()
    assert f"stale lock {path} of process {dead}" in caplog.text


def test_a_lock_from_another_host_is_kept_and_explained(tmp_path):
    path = tmp_path / "lock"
    path.write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "then"}))
    with pytest.raises(LockedError, match="on elsewhere since then.*delete the lock file"):
        OutputLock(str(path), "output").acquire()
    assert path.exists()


def test_preprocess_refuses_an_output_another_run_holds(tmp_path, capsys):
    out = tmp_path / "out"
    with lock_beside(str(out), "output"):
        assert pipeline.main(["--input", FIXTURE, "--output", str(out), "--hash-buckets", "5"]) == 2
    assert "in use by another run" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_two_concurrent_preprocess_runs_one_wins(tmp_path):
    """Started together into one output: exactly one succeeds, whichever way they interleave."""
    out = str(tmp_path / "out")
    argv = [sys.executable, "-m", "components.cli", "preprocess", "--input", FIXTURE, "--output", out,
            "--hash-buckets", "5", "--no-progress"]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "in use by another run" in loser or "already has data" in loser
    assert json.load(open(os.path.join(out, "metadata.json")))["vocab_sizes"]["cat_0"] == 5


def test_release_removes_a_folder_only_the_lock_created(tmp_path):
    made = tmp_path / "new" / "run"
    with OutputLock(str(made / ".lock"), "run dir"):
        assert made.is_dir()
    assert not made.exists()  # nothing else was written: no empty run dir left behind
    kept = tmp_path / "kept"
    with OutputLock(str(kept / ".lock"), "run dir"):
        (kept / "metrics.json").write_text("{}")
    assert (kept / "metrics.json").exists()
