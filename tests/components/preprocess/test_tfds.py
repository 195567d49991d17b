"""--format tfds on tiny builders defined and built here (no download), one with sequence (bag) features."""

import collections

import numpy as np
import tensorflow_datasets as tfds

from components.preprocess import pipeline
from tests.components.preprocess import bag_reference as ref
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


BAG_LINES = ref.bag_lines(rows=12)[:-2]


class TinyBagsForTest(tfds.core.GeneratorBasedBuilder):
    """C3 and C21 are sequences of strings (the raw elements of the TSV fields, spaces and empty ones included)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        features = {"label": tfds.features.Scalar(dtype=np.int64)}
        features.update({f"I{i}": tfds.features.Text() for i in range(1, 14)})
        features.update({f"C{i}": tfds.features.Sequence(tfds.features.Text()) if i in (3, 21)
                         else tfds.features.Text() for i in range(1, 27)})
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for n, line in enumerate(BAG_LINES):
            fields = line.split("\t")
            example = {"label": int(fields[0])}
            example.update({f"I{i}": fields[i] for i in range(1, 14)})
            example.update({f"C{f + 1}": (fields[14 + f].split(",") if fields[14 + f] else [])
                            if f + 1 in (3, 21) else fields[14 + f] for f in range(26)})
            yield n, example


def test_tfds_sequence_features_are_bags(tmp_path, capsys):
    data_dir = str(tmp_path / "tfds")
    TinyBagsForTest(data_dir=data_dir).download_and_prepare()
    out = str(tmp_path / "out")
    argv = ["--format", "tfds", "--input", "tiny_bags_for_test", "--tfds-data-dir", data_dir, "--hash-buckets", "7",
            "--no-progress"]
    bags = ["--multi-hot-columns", "C3,C21", "--max-bag-length", "C21:5"]
    assert pipeline.main([*argv, *bags, "--output", out]) == 0
    assert ref.read_ids(out) == ref.expected_ids(ref.good_rows(BAG_LINES), "hash")
    # A sequence feature that is not named a bag column is refused before the pipeline starts.
    assert pipeline.main([*argv, "--output", str(tmp_path / "o2")]) == 2
    assert "sequence features ['C3', 'C21']" in capsys.readouterr().err
