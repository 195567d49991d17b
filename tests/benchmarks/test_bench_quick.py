"""`embedopt bench --quick` end to end: the results document and the plots, not the timings."""

import json
import os
import subprocess
import sys

import pytest

from benchmarks import results, sharded_tables
from benchmarks.__main__ import BENCHMARKS, goals_table

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


def test_goals_table_marks_full_run_goals_of_a_quick_run_as_not_judged():
    goal = results.goal("x: step @100k/10k", "<= 1.5", 2.0, False, full_run_only=True)
    for quick, expected in ((True, "not judged in --quick"), (False, "NO")):
        document = results.new_document(quick=quick)
        document["benchmarks"]["x"] = results.benchmark("x", [], goals=[goal])
        row = goals_table(document).splitlines()[-1]
        assert expected in row and ("NO" in row) is not quick, row


def test_sharded_capacity_uses_the_growth_per_row_and_the_tightest_bound():
    mib = 2**20

    def case(rows, variables_per_row, rss_per_row, peak_per_row):
        runtime = 700 * mib
        return {"table_slot_bytes": variables_per_row * rows, "rss_runtime_bytes": runtime,
                "rss_after_steps_bytes": runtime + rss_per_row * rows, "peak_rss_bytes": runtime + peak_per_row * rows}

    by = {("sharded", 10): case(10, 192, 200, 210), ("sharded", 1000): case(1000, 192, 200, 210),
          ("mirrored", 10): case(10, 384, 600, 800), ("mirrored", 1000): case(1000, 384, 600, 800)}
    memory = 24 * 2**30
    per_worker = (memory - sharded_tables.HOST_RESERVE_BYTES) / 2 - 700 * mib
    sharded, mirrored = (sharded_tables.capacity(by, layout, memory) for layout in ("sharded", "mirrored"))
    assert sharded["variables_bytes_per_row_per_worker"] == pytest.approx(192)
    assert sharded["host_rows"] == int(per_worker / 210)
    assert mirrored["host_rows"] == int(per_worker / 800)
    gpu = sharded_tables.GPU_BYTES - sharded_tables.GPU_HEADROOM_BYTES
    assert sharded["gpu_rows"] == int(gpu / (192 * 2 / sharded_tables.GPU_WORKERS))
    assert mirrored["gpu_rows"] == int(gpu / 384)


def test_sharded_peak_prediction_scales_the_largest_smaller_case():
    by = {("mirrored", 1000): {"rss_runtime_bytes": 100, "peak_rss_bytes": 300},
          ("mirrored", 10): {"rss_runtime_bytes": 100, "peak_rss_bytes": 101}}
    assert sharded_tables.predicted_peak_bytes(by, "mirrored", 4000) == pytest.approx(100 + 200 * 4)
    assert sharded_tables.predicted_peak_bytes(by, "sharded", 4000) is None
