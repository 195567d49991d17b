"""No silent data loss in preprocess (issue 11): staged output, full emptiness check, bad inputs refused.

Each test fails on the code before the fix: --overwrite deleted the old
output up front, only top-level files counted as "data", a truncated .gz was
read as far as it went with exit 0, and an empty or all-bad input exited 0.
"""

import gzip
import json
import os
import shutil

import pytest

from components.preprocess import pipeline, sources
from tests.components.preprocess.helpers import FIXTURE, fixture_lines


def _run(out, *extra, input_path=FIXTURE):
    return pipeline.main(["--input", str(input_path), "--output", str(out), "--hash-buckets", "5", *extra])


@pytest.fixture(scope="module")
def good_output(tmp_path_factory):
    out = tmp_path_factory.mktemp("good") / "out"
    assert _run(out) == 0
    return out


def _snapshot(directory):
    return {os.path.relpath(os.path.join(d, f), directory): os.path.getsize(os.path.join(d, f))
            for d, _, files in os.walk(directory) for f in files}


def test_overwrite_that_fails_midway_keeps_the_previous_output(good_output, tmp_path, monkeypatch):
    out = tmp_path / "out"
    shutil.copytree(good_output, out)
    before = _snapshot(out)

    def crash(*args, **kwargs):
        raise RuntimeError("killed mid-run")

    monkeypatch.setattr(pipeline, "_check_rows", crash)  # fails after the pipeline wrote everything
    with pytest.raises(RuntimeError, match="killed mid-run"):
        _run(out, "--overwrite")
    assert _snapshot(out) == before
    assert [p for p in os.listdir(tmp_path) if p != "out"] == []  # no staging folder left behind


def test_overwrite_replaces_only_when_done(good_output, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(good_output, out)
    assert pipeline.main(["--input", FIXTURE, "--output", str(out), "--hash-buckets", "9", "--overwrite"]) == 0
    assert json.load(open(out / "metadata.json"))["vocab_sizes"]["cat_0"] == 9
    assert sorted(os.listdir(tmp_path)) == ["out"]


@pytest.mark.parametrize("leftover", ["Split-train/data-00000-00000.tfrecord.gz", "beam-temp-x/part"])
def test_a_folder_holding_only_subfolders_is_not_empty(tmp_path, capsys, leftover):
    out = tmp_path / "out"
    (out / leftover).parent.mkdir(parents=True)
    (out / leftover).write_bytes(b"old")
    assert _run(out) == 2
    assert "already has data" in capsys.readouterr().err
    assert (out / leftover).read_bytes() == b"old"


def test_output_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert _run(tmp_path / "file") == 2
    assert "is a file, not a directory" in capsys.readouterr().err


def test_truncated_gzip_is_an_error_naming_the_file(tmp_path, capsys):
    data = b"\n".join(fixture_lines() * 40) + b"\n"
    whole = gzip.compress(data)
    path = tmp_path / "cut.tsv.gz"
    path.write_bytes(whole[: len(whole) // 2])
    assert _run(tmp_path / "out", input_path=path) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "truncated or corrupt" in err
    assert not (tmp_path / "out").exists()


def test_whole_gzip_still_reads(tmp_path):
    path = tmp_path / "ok.tsv.gz"
    path.write_bytes(gzip.compress(b"\n".join(fixture_lines()) + b"\n"))
    assert _run(tmp_path / "out", input_path=path) == 0


def test_empty_input_is_an_error(tmp_path, capsys):
    (tmp_path / "empty.tsv").write_bytes(b"")
    assert _run(tmp_path / "out", input_path=tmp_path / "empty.tsv") == 2
    assert "has no rows" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_input_without_a_valid_row_is_an_error_with_reasons(tmp_path, capsys):
    (tmp_path / "bad.tsv").write_bytes(b"1\t2\t3\nx\n")
    assert _run(tmp_path / "out", input_path=tmp_path / "bad.tsv") == 2
    err = capsys.readouterr().err
    assert "no valid row" in err and "all 2 rows are malformed" in err and "line 1: wrong field count in line" in err


def test_input_error_marker_is_what_the_pipeline_looks_for():
    assert str(sources.InputFileError("f.gz", "bad")).startswith(sources.INPUT_ERROR_MARKER)


def test_a_directory_as_input_is_refused(tmp_path, capsys):
    assert _run(tmp_path / "out", input_path=tmp_path) == 2
    err = capsys.readouterr().err
    assert "matches the directory" in err and "*.tsv" in err
