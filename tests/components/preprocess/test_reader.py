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


@pytest.fixture(scope="module")
def bag_dir(tmp_path_factory):
    from tests.components.preprocess import bag_reference as ref

    root = tmp_path_factory.mktemp("bags")
    (root / "in.tsv").write_text("".join(line + "\n" for line in ref.bag_lines(rows=64)), encoding="utf-8")
    out = str(root / "out")
    assert pipeline.main(["--input", str(root / "in.tsv"), "--output", out, "--hash-buckets", "7", "--num-shards",
                          "2", "--multi-hot-columns", "C3,C21", "--eval-fraction", "0", "--no-progress"]) == 0
    return out


def _bag_rows(features, label):
    """Batch -> [(label, ids of each feature as a tuple)], reading ragged bag keys row by row."""
    rows = []
    for b in range(label.shape[0]):
        ids = []
        for i in range(26):
            value = features[f"cat_{i}"]
            ids.append(tuple(value[b].numpy().tolist()) if isinstance(value, tf.RaggedTensor) else (int(value[b]),))
        rows.append((int(label[b]), tuple(ids)))
    return rows


def test_bag_keys_are_ragged(bag_dir):
    from tests.components.preprocess import bag_reference as ref

    meta = load_metadata(bag_dir)
    got = []
    for features, label in make_dataset(f"{bag_dir}/Split-train/*", meta, 5, shuffle=False, num_epochs=1):
        for key in ("cat_2", "cat_20"):
            assert isinstance(features[key], tf.RaggedTensor) and features[key].ragged_rank == 1
            assert features[key].dtype == tf.int64 and features[key].row_splits.dtype == tf.int64
        assert features["cat_0"].shape.rank == 1
        got += _bag_rows(features, label)
    assert sorted(got) == ref.read_ids(bag_dir)
    assert any(len(ids[20]) == 0 for _, ids in got) and any(len(ids[20]) > 3 for _, ids in got)


def test_ragged_bags_pass_through_a_distributed_input_pipeline(bag_dir, mirrored_strategy):
    """MirroredStrategy over the two logical CPUs: every example reaches exactly one replica, bags intact."""
    from tests.components.preprocess import bag_reference as ref

    meta = load_metadata(bag_dir)

    def dataset_fn(context):
        return make_dataset(f"{bag_dir}/Split-train/*", meta, context.get_per_replica_batch_size(8), shuffle=False,
                            num_epochs=1, input_context=context)

    distributed = mirrored_strategy.distribute_datasets_from_function(dataset_fn)
    got, replicas = [], set()
    step = tf.function(lambda f: mirrored_strategy.run(lambda x: tf.reduce_sum(x["cat_20"].flat_values), args=(f,)))
    for features, label in distributed:
        sums = mirrored_strategy.experimental_local_results(step(features))
        for r, (f, l) in enumerate(zip(mirrored_strategy.experimental_local_results(features),
                                       mirrored_strategy.experimental_local_results(label))):
            assert isinstance(f["cat_20"], tf.RaggedTensor)
            replicas.add(r)
            rows = _bag_rows(f, l)
            assert int(sums[r]) == sum(sum(ids[20]) for _, ids in rows)  # the replica's step saw its own bags
            got += rows
    assert sorted(got) == ref.read_ids(bag_dir) and replicas == {0, 1}
