"""Issue 22 items 1 and 2 on a real full disk (a small tmpfs): a checkpoint or an export that runs out of space
ends `embedopt train` with one line naming the path and the space left, and leaves nothing partial behind."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.components.tmpfs import small_tmpfs
from tests.components.trainer.tiny_data import TINY_FLAGS, preprocessed, tiny_logs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("disk_full"))
    return preprocessed(tiny_logs(root, seed=5), os.path.join(root, "data"), hash_buckets=50)


def _train(data: str, run_dir: str, serving_dir: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, EMBEDOPT_VERBOSE="0")
    return subprocess.run([sys.executable, "-m", "components.cli", "train", "--data", data, "--model-run-dir",
                           run_dir, "--serving-model-dir", serving_dir, "--train-steps", "3", "--checkpoint-every",
                           "1", *TINY_FLAGS], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _embedopt_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("embedopt train:")]


def test_disk_full_during_a_checkpoint(data, tmp_path):
    with small_tmpfs(tmp_path / "disk", "40k") as disk:
        done = _train(data, os.path.join(disk, "run"), str(tmp_path / "serving"))
        checkpoints = os.path.join(disk, "run", "checkpoints")
        left = os.listdir(checkpoints) if os.path.isdir(checkpoints) else []
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    [line] = _embedopt_lines(done.stderr)
    assert line.startswith(f"embedopt train: disk full: no space left on device writing {checkpoints} ("), line
    assert f" free of " in line
    assert not [name for name in left if name.endswith("_temp")], left


def test_disk_full_during_the_export(data, tmp_path):
    with small_tmpfs(tmp_path / "disk", "60k") as disk:
        serving = os.path.join(disk, "serving")
        done = _train(data, str(tmp_path / "run"), serving)
        left = sorted(os.listdir(disk))
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    [line] = _embedopt_lines(done.stderr)
    assert line.startswith(f"embedopt train: disk full: no space left on device writing {serving} ("), line
    assert left == []  # no serving/ with a partial SavedModel, no staging folder
