"""`embedopt predict` end to end: plain and gzip files; refused lines keep their place (an empty output line and a
reason in OUTPUT.refused.tsv) or, with --strict, stop the run."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys

import numpy as np
import pytest

from components import cli
from components.predict import DEFAULT_BATCH_SIZE, main
from tests.components.trainer import raw_logs
from tests.components.trainer.served_model import export_random_model

# The output has 6 significant digits: 5e-7 relative, plus the 1e-6 the signatures may differ by.
RTOL, ATOL = 1e-6, 1e-6
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    return export_random_model(str(tmp_path_factory.mktemp("predict")), "min_frequency")


@pytest.fixture(scope="module")
def lines():
    good = raw_logs.good_lines()
    return good + [line.split(b"\t", 1)[1] for line in good[:5]]  # some 39-field lines too


def _write(path, lines, crlf=False):
    data = b"".join(line + (b"\r\n" if crlf else b"\n") for line in lines)
    with (gzip.open if str(path).endswith(".gz") else open)(path, "wb") as f:
        f.write(data)


def _read(path) -> list[float]:
    """One value per output line; an empty line (a refused input line) is NaN."""
    with (gzip.open if str(path).endswith(".gz") else open)(path, "rt", encoding="ascii") as f:
        return [float(x) if x else float("nan") for x in f.read().split("\n")[:-1]]


def _refused(output) -> list[list[str]]:
    with open(f"{output}.refused.tsv", encoding="utf-8") as f:
        rows = [line.split("\t") for line in f.read().splitlines()]
    assert rows[0] == ["file", "line", "reason"]
    return rows[1:]


@pytest.mark.parametrize("output_name", ["scores.txt", "scores.txt.gz"])
def test_scores_plain_and_gzip_files_in_input_order(served, lines, tmp_path, capsys, output_name):
    _write(tmp_path / "day_0.tsv", lines[:20])
    _write(tmp_path / "day_1.tsv.gz", lines[20:], crlf=True)
    output = tmp_path / "out" / output_name
    code = cli.main(["predict", "--model", served.export_dir, "--input", str(tmp_path / "day_*"),
                     "--output", str(output), "--batch-size", "7", "--no-progress"])
    assert code == 0
    np.testing.assert_allclose(_read(output), served.expected(lines)[:, 0], rtol=RTOL, atol=ATOL)
    assert f"read {len(lines)} lines from 2 file(s), scored {len(lines)}, refused 0" in capsys.readouterr().out
    assert sorted(os.listdir(output.parent)) == sorted([output_name, f"{output_name}.refused.tsv"])  # no temporary
    assert _refused(output) == []


def _with_bad_lines(lines, tmp_path):
    bad_field = lines[3].replace(b"\t", b"\tabc\t", 1).split(b"\t")
    bad_field = b"\t".join(bad_field[:2] + bad_field[3:])  # I1 = "abc", still 40 fields
    content = lines[:3] + [bad_field] + lines[3:9] + [b"1\t2\t3"] + lines[9:]
    _write(tmp_path / "logs.tsv", content)
    return str(tmp_path / "logs.tsv"), content


def test_strict_stops_at_the_first_bad_line_naming_file_and_line(served, lines, tmp_path, capsys):
    path, _ = _with_bad_lines(lines, tmp_path)
    output = tmp_path / "scores.txt"
    code = main(["--model", served.export_dir, "--input", path, "--output", str(output), "--no-progress", "--strict"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{path}:4: malformed line: non-integer count in I1: abc" in err
    assert "leave out --strict" in err
    assert not output.exists() and os.listdir(tmp_path) == ["logs.tsv"]


@pytest.mark.parametrize("batch_size", [4, DEFAULT_BATCH_SIZE])
@pytest.mark.parametrize("output_name", ["scores.txt", "scores.txt.gz"])
def test_every_input_line_gets_one_output_line(served, lines, tmp_path, capsys, batch_size, output_name):
    """A refused line gets an empty output line, so output line k is input line k, and its reason a row of
    OUTPUT.refused.tsv; pandas reads the output with the refused lines as NaN."""
    import pandas as pd

    path, content = _with_bad_lines(lines, tmp_path)
    output = tmp_path / output_name
    code = main(["--model", served.export_dir, "--input", path, "--output", str(output),
                 "--batch-size", str(batch_size), "--no-progress"])
    assert code == 0
    got = _read(output)
    assert len(got) == len(content)
    want = served.expected(lines)[:, 0].tolist()
    want = want[:3] + [float("nan")] + want[3:9] + [float("nan")] + want[9:]
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)  # NaN where NaN
    frame = pd.read_csv(output, header=None, names=["probability"], skip_blank_lines=False)
    np.testing.assert_allclose(frame["probability"].to_numpy(), want, rtol=RTOL, atol=ATOL)
    out = capsys.readouterr().out
    assert f"read {len(content)} lines from 1 file(s), scored {len(content) - 2}, refused 2" in out
    assert f"{output}.refused.tsv" in out
    assert _refused(output) == [
        [path, "4", "non-integer count in I1: abc"],
        [path, "11", "wrong field count in line: 3 tab-separated fields, expected 40 (label first) or 39 (no label)"]]


def test_the_old_skip_flag_still_runs_and_says_it_is_not_needed(served, lines, tmp_path, capsys):
    path, content = _with_bad_lines(lines, tmp_path)
    output = tmp_path / "scores.txt"
    code = main(["--model", served.export_dir, "--input", path, "--output", str(output), "--skip-bad-lines",
                 "--no-progress"])
    assert code == 0 and len(_read(output)) == len(content)
    assert "--skip-bad-lines is no longer needed" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--input", "{tmp}/nothing*"], "no files match --input"),
    (["--input", "{tmp}/logs.tsv", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["--input", "{tmp}/logs.tsv", "--model", "{tmp}/no_model"], "no_model"),
    (["--input", "{tmp}/broken.tsv.gz"], "cannot read"),
])
def test_usage_errors_exit_2(served, lines, tmp_path, capsys, argv, message):
    _write(tmp_path / "logs.tsv", lines[:3])
    (tmp_path / "broken.tsv.gz").write_bytes(gzip.compress(b"\n".join(lines[:3]))[:-20])
    args = {"--model": served.export_dir, "--output": str(tmp_path / "scores.txt")}
    args.update(zip(argv[::2], (a.format(tmp=tmp_path) for a in argv[1::2])))
    assert main([x for kv in args.items() for x in kv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "scores.txt").exists()


def test_help_explains_every_option_without_importing_tensorflow():
    code = ("import sys; from components import predict; text = predict.build_parser().format_help(); "
            "print(text); print('tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    text, imported = result.stdout.rsplit("\n", 2)[0], result.stdout.rsplit("\n", 2)[1]
    assert imported == "False"
    for option in ("--model", "--input", "--output", "--batch-size", "--strict", "--no-progress"):
        assert option in text
    assert f"(default: {DEFAULT_BATCH_SIZE})" in text and ".refused.tsv" in text and "--skip-bad-lines" not in text
    assert "predict" in cli._usage()


def test_progress_shows_lines_per_second(served, lines, tmp_path, capsys, caplog, monkeypatch):
    from components import predict

    _write(tmp_path / "logs.tsv", lines)
    output = str(tmp_path / "scores.txt")
    predict.predict(served.export_dir, [str(tmp_path / "logs.tsv")], output, batch_size=8, progress_bar=True)
    bar = capsys.readouterr().err
    assert f"predict: {len(lines)}.0 lines" in bar and "lines/s" in bar
    monkeypatch.setattr(predict, "LOG_INTERVAL_SECONDS", 0.0)
    with caplog.at_level("INFO", logger=predict.__name__):
        predict.predict(served.export_dir, [str(tmp_path / "logs.tsv")], output, batch_size=8, progress_bar=False)
    assert any("lines/s" in record.getMessage() for record in caplog.records)
