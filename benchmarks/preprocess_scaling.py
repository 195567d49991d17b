"""Item 9: `embedopt preprocess` rows/s and peak RSS of the whole process tree, by rows, mode and workers.

Each configuration runs the real command line in a child process tree, as a
user would (`embedopt preprocess --input ... --output ...`), on `embedopt
synth` rows: vocabulary mode (the default, `--min-frequency 2`: two reads of
the input) and hash mode (`--hash-buckets`, one read), DirectRunner with 1
worker (in-memory) and 2 workers (multi_processing). The RSS is sampled every
0.2 s over the launcher and all its descendants (Beam's worker processes
included) and summed; rows/s counts every input row, start-up included.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from benchmarks import data, results

NAME = "preprocess_scaling"
FULL = dict(rows=(1_000_000, 4_000_000), modes=("vocab", "hash"), workers=(1, 2), repeats=1)
QUICK = dict(rows=(20_000,), modes=("vocab",), workers=(1,), repeats=1)
HASH_FLAGS = ["--hash-buckets", "1048576"]


def tree_rss_bytes(pid: int) -> int:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def run_cli(tsv: str, output: str, mode: str, workers: int) -> dict:
    """One `embedopt preprocess` run; wall seconds and the peak summed RSS of its process tree."""
    argv = [sys.executable, "-m", "components.cli", "preprocess", *data.preprocess_argv(tsv, output, workers),
            "--no-progress", *(HASH_FLAGS if mode == "hash" else [])]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss_bytes(proc.pid))
        time.sleep(0.2)
    seconds = time.perf_counter() - start
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {proc.returncode}:\n{err[-3000:]}")
    return {"seconds": seconds, "peak_tree_rss_bytes": peak}


def run(quick: bool, repeats: int | None = None, progress=None, workdir: str = ".") -> dict:
    cfg = QUICK if quick else FULL
    measurements = []
    for rows in cfg["rows"]:
        tsv = data.synthetic_tsv(workdir, rows)
        for mode in cfg["modes"]:
            for workers in cfg["workers"]:
                output = os.path.join(workdir, f"scaling-{rows}-{mode}-{workers}w")
                runs = [run_cli(tsv, output, mode, workers) for _ in range(repeats or cfg["repeats"])]
                m = results.measurement(dict(rows=rows, mode=mode, workers=workers, runner="DirectRunner",
                                             bytes=os.path.getsize(tsv)), [r["seconds"] for r in runs])
                m["rows_per_s"] = rows / m["median_s"]
                m["peak_tree_rss_bytes"] = max(r["peak_tree_rss_bytes"] for r in runs)
                measurements.append(m)
                if progress:
                    progress(f"{NAME} {rows} {mode} {workers}w")
    return results.benchmark(__doc__.splitlines()[0], measurements, *_ratios_and_goals(measurements, cfg))


def _ratios_and_goals(ms: list[dict], cfg: dict):
    by = {(m["params"]["rows"], m["params"]["mode"], m["params"]["workers"]): m for m in ms}
    ratios, goals = {}, []
    big, small = max(cfg["rows"]), min(cfg["rows"])
    for (rows, mode, workers), m in by.items():
        ratios[f"rows/s {rows} {mode} {workers}w"] = m["rows_per_s"]
        ratios[f"peak tree RSS GB {rows} {mode} {workers}w"] = m["peak_tree_rss_bytes"] / 1e9
    peak = max(m["peak_tree_rss_bytes"] for m in ms)
    goals.append(results.goal(f"{NAME}: peak tree RSS (GB), any run", "<= 2", peak / 1e9, peak <= 2e9))
    for mode in cfg["modes"]:
        if 2 in cfg["workers"] and (big, mode, 2) in by:
            rate = by[(big, mode, 2)]["rows_per_s"]
            goals.append(results.goal(f"{NAME}: rows/s {mode}, 2 workers, {big} rows", ">= 25000", rate, rate >= 25_000))
            speedup = rate / by[(big, mode, 1)]["rows_per_s"]
            ratios[f"2 workers / 1 worker {mode} {big}"] = speedup
            goals.append(results.goal(f"{NAME}: 2 workers / 1 worker rows/s, {mode}", ">= 1.6", speedup, speedup >= 1.6))
        if big != small:
            for workers in cfg["workers"]:
                growth = by[(big, mode, workers)]["peak_tree_rss_bytes"] / by[(small, mode, workers)]["peak_tree_rss_bytes"]
                ratios[f"RSS {big} / RSS {small} {mode} {workers}w"] = growth
                goals.append(results.goal(f"{NAME}: peak RSS {big} rows / {small} rows, {mode} {workers}w", "<= 1.25",
                                          growth, growth <= 1.25))
    notes = [f"{os.cpu_count()} CPU cores; wall time includes start-up (Python, Beam, worker processes)."]
    if len(cfg["rows"]) == 1:
        notes.append("--quick: one small size and one worker, so the scaling goals are not measured.")
    return ratios, goals, notes
