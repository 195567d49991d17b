"""Synthetic Criteo-format data and its preprocessed TFRecords, made once per output dir."""

from __future__ import annotations

import os


def synthetic_tsv(workdir: str, rows: int) -> str:
    """`embedopt synth` output with `rows` rows (seed 0), reused if already there."""
    from components.preprocess import synth
    from components.preprocess.synth_truth import SynthConfig

    path = os.path.join(workdir, f"synth-{rows}", "data.tsv")
    if not os.path.exists(path + ".meta.json"):
        synth.generate(SynthConfig(), rows, path, progress=False)
    return path


def preprocess_argv(tsv: str, output: str, workers: int) -> list[str]:
    argv = ["--input", tsv, "--output", output, "--overwrite"]
    if workers > 1:
        argv += ["--direct_num_workers", str(workers), "--direct_running_mode", "multi_processing"]
    return argv


def preprocessed(workdir: str, rows: int) -> str:
    """Directory of the preprocess output (default options, 1 worker) for `rows` synthetic rows."""
    from components.preprocess import pipeline

    output = os.path.join(workdir, f"preprocessed-{rows}")
    if not os.path.exists(os.path.join(output, "metadata.json")):
        pipeline.run(preprocess_argv(synthetic_tsv(workdir, rows), output, 1))
    return output
