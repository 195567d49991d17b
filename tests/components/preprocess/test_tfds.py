"""--format tfds on a tiny builder defined and built here (no download)."""

import collections

import numpy as np
import tensorflow_datasets as tfds

from components.preprocess import pipeline
from tests.components.preprocess.helpers import dead_letters, decode_rows, fixture_lines, good_rows

ROWS = good_rows(fixture_lines())[:15]


class TinyCriteoForTest(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        features = {"label": tfds.features.Scalar(dtype=np.int64)}
        features.update({f"I{i}": tfds.features.Text() for i in range(1, 14)})
        features.update({f"C{i}": tfds.features.Text() for i in range(1, 27)})
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for n, (label, counts, cats) in enumerate(ROWS + [(2, ROWS[0][1], ROWS[0][2])]):
            example = {"label": label}
            example.update({f"I{i + 1}": "" if c is None else str(c) for i, c in enumerate(counts)})
            example.update({f"C{i + 1}": v for i, v in enumerate(cats)})
            yield n, example


def test_tfds_dataset_through_the_pipeline(tmp_path):
    data_dir = str(tmp_path / "tfds")
    TinyCriteoForTest(data_dir=data_dir).download_and_prepare()
    out = str(tmp_path / "out")
    argv = ["--format", "tfds", "--input", "tiny_criteo_for_test", "--tfds-data-dir", data_dir,
            "--output", out, "--min-frequency", "1"]
    assert pipeline.main(argv) == 0
    decoded = decode_rows(out, "train") + decode_rows(out, "eval")
    expected = [(lab, tuple(c or 0 for c in counts), cats) for lab, counts, cats in ROWS]
    assert collections.Counter(decoded) == collections.Counter(expected)
    dead = dead_letters(out)
    assert len(dead) == 1 and dead[0]["reason"].startswith("label not 0/1")
    assert dead[0]["source"] == "tfds:tiny_criteo_for_test/train"
