"""`embedopt bench --quick` end to end: the results document and the plots, not the timings."""

import json
import os
import subprocess
import sys

import pytest

from benchmarks import results
from benchmarks.__main__ import BENCHMARKS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("bench")
    # A child process: the test session's two logical CPUs must not leak into the benchmarks.
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--no-progress", "--output", str(output)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(output / "results.json", encoding="utf-8") as f:
        return output, json.load(f), proc.stdout


@pytest.mark.slow
def test_quick_run_writes_a_conforming_results_document(quick_run):
    _, document, _ = quick_run
    assert results.check_schema(document) == []
    assert document["quick"] is True
    assert set(document["benchmarks"]) == set(BENCHMARKS)
    for name, bench in document["benchmarks"].items():
        assert "error" not in bench, f"{name}: {bench.get('error')}"
        assert bench["measurements"], name
        for m in bench["measurements"]:
            assert len(m["repeats_s"]) >= 1 and m["median_s"] > 0


@pytest.mark.slow
def test_quick_run_writes_one_valid_png_per_benchmark(quick_run):
    output, document, _ = quick_run
    assert sorted(document["plots"]) == sorted(f"{name}.png" for name in BENCHMARKS)
    for name in document["plots"]:
        with open(os.path.join(output, name), "rb") as f:
            assert f.read(8) == PNG_SIGNATURE, name
        assert os.path.getsize(os.path.join(output, name)) < 150_000, name


@pytest.mark.slow
def test_quick_run_prints_the_goals_table(quick_run):
    _, document, stdout = quick_run
    goals = [g for bench in document["benchmarks"].values() for g in bench["goals"]]
    assert goals
    for g in goals:
        assert g["name"] in stdout


def test_check_schema_reports_a_measurement_without_repeats():
    document = results.new_document(quick=True)
    document["machine"]["loadavg_end"] = [0.0, 0.0, 0.0]
    document["benchmarks"]["x"] = results.benchmark("x", [{"params": {}, "median_s": 1.0, "iqr_s": 0.0}])
    assert any("repeats_s" in p for p in results.check_schema(document))


def test_summarize_gives_median_and_interquartile_range():
    summary = results.summarize([4.0, 1.0, 3.0, 2.0, 5.0])
    assert summary["median_s"] == 3.0
    assert summary["iqr_s"] == pytest.approx(2.0)
    assert summary["repeats_s"] == [4.0, 1.0, 3.0, 2.0, 5.0]
