"""Item 5: Beam preprocessing rows/s (DirectRunner, 1 and 2 workers) on generated data.

`embedopt preprocess` with default options (vocabulary by minimum frequency,
GZIP TFRecords, dead letter) runs in a child process on `embedopt synth`
rows; the time covers the whole pipeline, start-up included, as a user sees
it. One worker is the DirectRunner's default in-memory mode; two workers use
`--direct_num_workers 2 --direct_running_mode multi_processing`.
"""

from __future__ import annotations

import os
import time

from benchmarks import data, harness, results

NAME = "preprocess_rate"
FULL = dict(rows=50_000, workers=(1, 2), repeats=2)
QUICK = dict(rows=2_000, workers=(1,), repeats=1)


def _output_dir(workdir: str, rows: int, workers: int) -> str:
    # The one-worker output is the one `input_pipeline` reads, so it is not made twice.
    return os.path.join(workdir, f"preprocessed-{rows}" if workers == 1 else f"preprocessed-{rows}-{workers}w")


def run_pipeline(tsv: str, output: str, workers: int) -> dict:
    """Child process body: one pipeline run."""
    import logging

    from components.preprocess import pipeline

    logging.disable(logging.INFO)
    start = time.perf_counter()
    meta = pipeline.run(data.preprocess_argv(tsv, output, workers))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rows": sum(meta.row_counts.values()) + meta.dead_letter_count}


def run(quick: bool, repeats: int | None = None, progress=None, workdir: str = ".") -> dict:
    cfg = QUICK if quick else FULL
    tsv = data.synthetic_tsv(workdir, cfg["rows"])
    measurements, ratios = [], {}
    for workers in cfg["workers"]:
        runs = [harness.run_child(f"{__name__}:run_pipeline",
                                  dict(tsv=tsv, output=_output_dir(workdir, cfg["rows"], workers), workers=workers))
                for _ in range(repeats or cfg["repeats"])]
        m = results.measurement(dict(rows=cfg["rows"], workers=workers, runner="DirectRunner",
                                     mode="multi_processing" if workers > 1 else "in_memory"),
                                [r["seconds"] for r in runs])
        m["rows_per_s"] = runs[0]["rows"] / m["median_s"]
        measurements.append(m)
        ratios[f"rows/s {workers} worker{'s' if workers > 1 else ''}"] = m["rows_per_s"]
        if progress:
            progress(f"{NAME} {workers}w")
    if len(measurements) == 2:
        ratios["2 workers / 1 worker (rows/s)"] = measurements[1]["rows_per_s"] / measurements[0]["rows_per_s"]
    notes = [f"{os.cpu_count()} CPU cores; times include pipeline start-up (a few seconds)."]
    return results.benchmark(__doc__.splitlines()[0], measurements, ratios, notes=notes)
