"""Issue 22 item 4 for preprocess: an output folder that is or holds the input is refused, --overwrite or not."""

from __future__ import annotations

import os
import shutil

import pytest

from components.preprocess import pipeline
from tests.components.preprocess.helpers import FIXTURE


@pytest.mark.parametrize("output", ["input_folder", "symlink_to_input_folder", "parent_of_input_folder"])
@pytest.mark.parametrize("overwrite", [True, False])
def test_output_holding_the_input_is_refused_and_the_input_kept(tmp_path, capsys, output, overwrite):
    logs = tmp_path / "parent" / "logs"
    logs.mkdir(parents=True)
    raw = logs / "day_0.tsv"
    shutil.copy(FIXTURE, raw)
    before = raw.read_bytes()
    target = {"input_folder": logs, "symlink_to_input_folder": tmp_path / "link",
              "parent_of_input_folder": tmp_path / "parent"}[output]
    if output == "symlink_to_input_folder":
        os.symlink(logs, target)
    argv = ["--input", str(raw), "--output", str(target), "--hash-buckets", "5"] + (["--overwrite"] if overwrite else [])
    assert pipeline.main(argv) == 2
    assert raw.read_bytes() == before and sorted(os.listdir(logs)) == ["day_0.tsv"]
    assert "is or holds the input" in capsys.readouterr().err


def test_a_killed_runs_staging_folder_is_removed_by_the_next_run(tmp_path):
    import subprocess
    import sys

    done = subprocess.Popen([sys.executable, "-c", "pass"])  # a process id that is no longer running
    assert done.wait() == 0
    leftover = tmp_path / f".out.embedopt-tmp-{done.pid}-0123abcd"
    (leftover / "Split-train").mkdir(parents=True)
    assert pipeline.main(["--input", FIXTURE, "--output", str(tmp_path / "out"), "--hash-buckets", "5"]) == 0
    assert sorted(os.listdir(tmp_path)) == ["out"]
