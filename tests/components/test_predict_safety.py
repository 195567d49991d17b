"""Issue 22 item 4: predict never replaces its own input, and its outputs get the umask's mode, not 0600."""

from __future__ import annotations

import os

import pytest

from components import cli
from tests.components.trainer import raw_logs
from tests.components.trainer.served_model import export_random_model


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    return export_random_model(str(tmp_path_factory.mktemp("predict_safety")), "hash")


@pytest.fixture
def log_file(tmp_path):
    path = tmp_path / "day_0.tsv"
    path.write_bytes(b"".join(line + b"\n" for line in raw_logs.good_lines()[:10]))
    return path


def _predict(served, input_pattern, output) -> int:
    return cli.main(["predict", "--model", served.export_dir, "--input", str(input_pattern), "--output", str(output),
                     "--no-progress"])


@pytest.mark.parametrize("how", ["same_path", "symlink", "hard_link"])
def test_output_that_is_the_input_is_refused_and_the_input_kept(served, log_file, tmp_path, capsys, how):
    before = log_file.read_bytes()
    output = {"same_path": log_file, "symlink": tmp_path / "link.tsv", "hard_link": tmp_path / "hard.tsv"}[how]
    if how == "symlink":
        os.symlink(log_file, output)
    elif how == "hard_link":
        os.link(log_file, output)
    assert _predict(served, log_file, output) == 2
    assert log_file.read_bytes() == before
    assert f"would overwrite the input file '{log_file}'" in capsys.readouterr().err


def test_outputs_get_the_umask_mode(served, log_file, tmp_path):
    old = os.umask(0o022)
    try:
        assert _predict(served, log_file, tmp_path / "out" / "scores.txt") == 0
    finally:
        os.umask(old)
    for name in ("scores.txt", "scores.txt.refused.tsv"):
        assert os.stat(tmp_path / "out" / name).st_mode & 0o777 == 0o644, name
