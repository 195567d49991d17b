"""Small preprocess outputs for the restart and disk-full tests: two days of logs, hashed or with vocabularies."""

from __future__ import annotations

import os

ROWS = 600


def tiny_logs(root: str, seed: int) -> str:
    from components.preprocess import synth
    from components.preprocess.synth_truth import SynthConfig

    raw = os.path.join(root, f"raw{seed}", "data.tsv")
    config = SynthConfig(seed=seed, vocab_sizes=(20,) * 26, reference_rows=ROWS, frequent_count=10,
                         calibration_rows=5_000)
    synth.generate(config, ROWS, raw, progress=False)
    return raw


def preprocessed(raw: str, out: str, hash_buckets: int | None) -> str:
    from components.preprocess import pipeline
    from components.preprocess.spec import PreprocessSpec

    extra = {"hash_buckets": (hash_buckets,) * 26} if hash_buckets else {}
    pipeline.execute(PreprocessSpec(input=raw, output=out, eval_fraction=0.2, **extra))
    return out


# The trainer flags of a model that builds and steps in well under a second.
TINY_FLAGS = ["--batch-size", "64", "--embedding-dim", "4", "--bottom-mlp", "8", "--top-mlp", "8", "--no-baseline",
              "--no-progress", "--eval-steps", "1"]
