"""Issue 22 item 1 on a real full disk (a small tmpfs): preprocess ends with one line naming the output and the
space left, not Beam's traceback, and leaves no staging folder."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.components.tmpfs import small_tmpfs
from tests.components.preprocess.helpers import FIXTURE

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_disk_full_during_preprocess(tmp_path):
    with small_tmpfs(tmp_path / "disk", "16k") as disk:
        out = os.path.join(disk, "out")
        done = subprocess.run([sys.executable, "-m", "components.cli", "preprocess", "--input", FIXTURE, "--output",
                               out], cwd=ROOT, env=dict(os.environ, EMBEDOPT_VERBOSE="0"), capture_output=True,
                              text=True, timeout=300)
        left = os.listdir(disk)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "while running" not in done.stderr, done.stderr[-3000:]
    [line] = [line for line in done.stderr.splitlines() if line.startswith("embedopt preprocess:")]
    assert line.startswith(f"embedopt preprocess: disk full: no space left on device writing {out} ("), line
    assert f"on the filesystem holding {disk}" in line
    assert left == []
