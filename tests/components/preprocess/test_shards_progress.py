"""Output shards (--num-shards, the default) and the progress reported across worker processes."""

import glob
import json
import logging
import os

import pytest

from components.preprocess import pipeline
from components.preprocess.plan import default_num_shards
from components.preprocess.progress import ProgressMonitor, ProgressWriter, read_progress
from tests.components.preprocess.helpers import FIXTURE, fixture_lines, good_rows, read_examples


@pytest.mark.parametrize("shards", [1, 3])
def test_num_shards_sets_the_files_per_split_and_keeps_every_row(tmp_path, shards):
    out = str(tmp_path / "o")
    assert pipeline.main(["--input", FIXTURE, "--output", out, "--num-shards", str(shards), "--eval-fraction", "0.3",
                          "--min-frequency", "1"]) == 0
    for split in ("train", "eval"):
        files = glob.glob(os.path.join(out, f"Split-{split}", "*.tfrecord.gz"))
        assert 1 <= len(files) <= shards
    assert len(glob.glob(os.path.join(out, "Split-train", "*.tfrecord.gz"))) == shards  # the fixture is cut in 3
    examples = read_examples(os.path.join(out, "Split-*", "*.tfrecord.gz"))
    assert len(examples) == len(good_rows(fixture_lines()))
    meta = json.load(open(os.path.join(out, "metadata.json")))
    assert meta["options"]["num_shards"] == shards
    assert not os.path.exists(os.path.join(out, "_progress")) and not os.path.exists(os.path.join(out, "_counts"))


@pytest.mark.parametrize("size, shards", [(0, 1), (500_000, 1), (5 << 20, 5), (100 << 20, 8), (10 << 30, 160)])
def test_default_num_shards(size, shards):
    assert default_num_shards(size) == shards


def test_num_shards_must_be_positive(tmp_path, capsys):
    assert pipeline.main(["--input", FIXTURE, "--output", str(tmp_path / "o"), "--num-shards", "0"]) == 2
    assert "--num-shards must be >= 1" in capsys.readouterr().err


def test_progress_files_are_summed_and_logged(tmp_path, caplog):
    folder = str(tmp_path / "progress")
    with caplog.at_level(logging.INFO, logger="components.preprocess.progress"):
        with ProgressMonitor(folder, total_bytes=1000, passes=2, bar=False, log_every=3600, poll=0.01):
            ProgressWriter(folder, "count-00000-00000").update(600, 30, final=True)
            ProgressWriter(folder, "count-00000-00001").update(400, 20, final=True)
            ProgressWriter(folder, "encode-00000-00000").update(250, 10)  # the first write is never held back
    assert read_progress(folder) == (1250, 60)
    assert "62% of the input (2 passes)" in caplog.text and "rows/s" in caplog.text


def test_a_writer_without_folder_does_nothing(tmp_path):
    ProgressWriter(None, "x").update(1, 1, final=True)
    assert read_progress(str(tmp_path / "missing")) == (0, 0)
