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
    """`embedopt preprocess` flags for the benchmarks that time the command itself (preprocess_scaling)."""
    argv = ["--input", tsv, "--output", output, "--overwrite"]
    if workers > 1:
        argv += ["--direct_num_workers", str(workers), "--direct_running_mode", "multi_processing"]
    return argv


def preprocessed(workdir: str, rows: int):
    """The `ExamplesLayout` of the preprocess output (default options, 1 worker) for `rows` synthetic rows."""
    from components.preprocess import pipeline
    from components.preprocess.metadata import ExamplesLayout
    from components.preprocess.spec import PreprocessSpec

    layout = ExamplesLayout(os.path.join(workdir, f"preprocessed-{rows}"))
    if not os.path.exists(layout.metadata_path):
        pipeline.execute(PreprocessSpec(input=synthetic_tsv(workdir, rows), output=layout.root, overwrite=True))
    return layout
