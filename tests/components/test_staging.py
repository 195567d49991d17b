"""Issue 22 item 2: a staged directory output is whole or absent, also after kill -9; the next write cleans up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from components import staging

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _files(folder) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), folder) for d, _, files in os.walk(folder) for f in files}


def test_a_failure_inside_keeps_the_earlier_output_and_removes_the_staging(tmp_path):
    out = tmp_path / "serving_model"
    out.mkdir()
    (out / "saved_model.pb").write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with staging.staged_directory(str(out)) as folder:
            open(os.path.join(folder, "saved_model.pb.tmp123"), "wb").close()
            raise RuntimeError("disk full")
    assert os.listdir(tmp_path) == ["serving_model"] and _files(out) == {"saved_model.pb"}
    assert (out / "saved_model.pb").read_bytes() == b"old"


def test_kill_9_inside_leaves_no_output_and_the_next_write_removes_the_leftover(tmp_path):
    out = tmp_path / "serving_model"
    script = ("import os, signal, sys; from components import staging\n"
              "with staging.staged_directory(sys.argv[1]) as folder:\n"
              "    os.makedirs(os.path.join(folder, 'variables', 'variables_temp'))\n"
              "    open(os.path.join(folder, 'saved_model.pb.tmp1'), 'wb').close()\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n")
    killed = subprocess.run([sys.executable, "-c", script, str(out)], cwd=ROOT)
    assert killed.returncode == -signal.SIGKILL
    assert not out.exists()
    assert len(os.listdir(tmp_path)) == 1  # the killed write's staging folder, beside the output
    with staging.staged_directory(str(out)) as folder:
        open(os.path.join(folder, "saved_model.pb"), "wb").close()
    assert os.listdir(tmp_path) == ["serving_model"] and _files(out) == {"saved_model.pb"}


def test_a_running_writers_staging_folder_is_left_alone(tmp_path):
    other = tmp_path / f".out{staging.STAGING_TAG}{os.getpid()}-abcdef12"  # this process: alive
    other.mkdir()
    assert staging.remove_stale_staging(str(tmp_path / "out")) == []
    assert other.exists()


def test_temp_file_gets_the_umask_mode_not_0600(tmp_path):
    old = os.umask(0o027)
    try:
        fd, name = staging.temp_file_beside(str(tmp_path / "scores.txt"))
        os.close(fd)
    finally:
        os.umask(old)
    assert os.stat(name).st_mode & 0o777 == 0o640
