import collections
import os

import numpy as np
import pytest
import tensorflow as tf

from components.preprocess import pipeline
from components.preprocess.metadata import load_metadata
from components.preprocess.reader import make_dataset, parse_serialized
from tests.components.preprocess.helpers import FIXTURE, read_examples


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("reader") / "out")
    assert pipeline.main(["--input", FIXTURE, "--output", out, "--hash-buckets", "11", "--eval-fraction", "0.3"]) == 0
    return out


def _key(label, dense, cats):
    return (int(label), tuple(np.round(np.asarray(dense, np.float32), 5)), tuple(int(c) for c in cats))


def _expected(out_dir, pattern):
    return collections.Counter(
        _key(ex["label"][0], ex["dense"], [ex[f"cat_{i}"][0] for i in range(26)])
        for ex in read_examples(os.path.join(out_dir, pattern))
    )


def _collect(dataset):
    got = collections.Counter()
    for features, label in dataset:
        assert features["dense"].dtype == tf.float32 and features["dense"].shape[1] == 13
        assert label.dtype == tf.float32 and features["cat_0"].dtype == tf.int64 and features["cat_0"].shape.rank == 1
        for b in range(label.shape[0]):
            got[_key(label[b], features["dense"][b], [features[f"cat_{i}"][b] for i in range(26)])] += 1
    return got


def test_reader_returns_every_example_once(out_dir):
    meta = load_metadata(out_dir)
    pattern = os.path.join(out_dir, "Split-train", "*.tfrecord.gz")
    ds = make_dataset(pattern, meta, batch_size=4, shuffle=True, seed=1, num_epochs=1)
    assert _collect(ds) == _expected(out_dir, "Split-train/*.tfrecord.gz")


@pytest.mark.parametrize("patterns", [["Split-train/*.gz"], ["Split-train/*.gz", "Split-eval/*.gz"]])
def test_input_context_shards_are_disjoint_and_complete(out_dir, patterns):
    meta = load_metadata(out_dir)
    files = [os.path.join(out_dir, p) for p in patterns]
    shards = [
        _collect(make_dataset(files, meta, 3, shuffle=False, num_epochs=1, input_context=tf.distribute.InputContext(2, i, 2)))
        for i in range(2)
    ]
    expected = sum((_expected(out_dir, p) for p in patterns), collections.Counter())
    assert shards[0] + shards[1] == expected
    assert sum(shards[0].values()) > 0 and sum(shards[1].values()) > 0


def test_parse_serialized_for_serving(out_dir):
    meta = load_metadata(out_dir)
    raw = next(iter(tf.data.TFRecordDataset(
        tf.io.gfile.glob(os.path.join(out_dir, "Split-train", "*.gz")), compression_type="GZIP").batch(5)))
    features = parse_serialized(raw, meta)
    assert set(features) == {"dense", *meta.categorical_keys}
    assert features["dense"].shape == (5, 13) and features["cat_25"].shape == (5,)


def test_no_files_is_a_clear_error(out_dir, tmp_path):
    with pytest.raises(ValueError, match="no files match"):
        make_dataset(str(tmp_path / "*.gz"), load_metadata(out_dir), 4)


def test_load_metadata_rejects_missing_fields(tmp_path):
    (tmp_path / "metadata.json").write_text('{"format_version": 1}')
    with pytest.raises(ValueError, match="missing fields"):
        load_metadata(tmp_path)
