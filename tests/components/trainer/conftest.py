"""A small planted dataset, made once per session with the real synth + preprocess code."""

from __future__ import annotations

import os

import pytest

from components.preprocess.metadata import ExamplesLayout

ROWS = 12_000
VOCAB = 40


@pytest.fixture(scope="session")
def planted_data(tmp_path_factory) -> str:
    """Preprocess output dir (an `ExamplesLayout` root) of 12k synthetic rows."""
    from components.preprocess import pipeline, synth
    from components.preprocess.spec import PreprocessSpec
    from components.preprocess.synth_truth import SynthConfig

    root = tmp_path_factory.mktemp("planted")
    raw = os.path.join(root, "raw", "data.tsv")
    config = SynthConfig(seed=3, vocab_sizes=(VOCAB,) * 26, reference_rows=ROWS, frequent_count=20,
                         calibration_rows=20_000)
    synth.generate(config, ROWS, raw, progress=False)
    out = os.path.join(root, "data")
    pipeline.execute(PreprocessSpec(input=raw, output=out, eval_fraction=0.2))
    return out


def bayes_auc(data_dir: str) -> float:
    return ExamplesLayout(data_dir).metadata().synth_metadata["bayes_auc"]
