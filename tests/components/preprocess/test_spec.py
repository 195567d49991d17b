"""`PreprocessSpec` (validated once, errors naming the field), the CLI's flags -> spec, and `ExamplesLayout`."""

import json
import os

import pytest

from components.preprocess import metadata as md
from components.preprocess import pipeline
from components.preprocess.spec import DEFAULT_MIN_FREQUENCY, PreprocessSpec, SpecError, UsageError
from tests.components.preprocess.helpers import FIXTURE, fixture_lines, good_rows


def spec(**changes) -> PreprocessSpec:
    return PreprocessSpec(**{"input": "in.tsv", "output": "out", **changes})


@pytest.mark.parametrize("field, value, message", [
    ("input", "", "input must be a non-empty path"),
    ("output", None, "output must be a non-empty path"),
    ("format", "orc", "format must be one of tsv, csv, tfds, parquet, got 'orc'"),
    ("eval_fraction", 1.5, "eval_fraction must be in [0, 1], got 1.5"),
    ("eval_fraction", -0.1, "eval_fraction must be in [0, 1], got -0.1"),
    ("eval_fraction", "0.1", "eval_fraction must be in [0, 1]"),
    ("hash_buckets", (1, 2), "hash_buckets takes one value or 26 comma-separated values, each >= 2; got '1,2'"),
    ("hash_buckets", 1, "hash_buckets takes one value or 26 comma-separated values, each >= 2; got '1'"),
    ("vocab_size", (0,), "vocab_size takes one value or 26 comma-separated values, each >= 1; got '0'"),
    ("vocab_size", (5,) * 25, "vocab_size takes one value or 26"),
    ("vocab_size", (2.5,), "vocab_size takes one value or 26"),
    ("min_frequency", 0, "min_frequency must be >= 1, got 0"),
    ("num_shards", 0, "num_shards must be >= 1, got 0"),
    ("num_shards", 2.0, "num_shards must be >= 1, got 2.0"),
    ("compression_level", 0, "compression_level must be an integer in 1..9, got 0"),
    ("compression_level", 10, "compression_level must be an integer in 1..9, got 10"),
    ("beam_args", (1,), "beam_args must be strings"),
    ("negative_counts", "drop", "negative_counts must be one of clamp, reject, got 'drop'"),
])
def test_each_bad_field_is_named(field, value, message):
    with pytest.raises(SpecError) as err:
        spec(**{field: value})
    assert err.value.field == field
    assert message in str(err.value)
    assert isinstance(err.value, UsageError) and isinstance(err.value, ValueError)


def test_vocabulary_modes_exclude_each_other():
    with pytest.raises(SpecError, match="hash_buckets cannot be combined with vocab_size") as err:
        spec(vocab_size=(5,), hash_buckets=(7,))
    assert err.value.field == "hash_buckets"


def test_defaults_and_normalised_fields():
    default = spec()
    assert (default.vocab_mode, default.min_frequency, default.passes) == ("min_frequency", DEFAULT_MIN_FREQUENCY, 2)
    hashed = spec(hash_buckets=7)
    assert hashed.hash_buckets == (7,) * md.NUM_CATEGORICAL and hashed.min_frequency is None
    assert (hashed.vocab_mode, hashed.passes) == ("hash", 1)
    assert spec(vocab_size=[3] * 26).vocab_size == (3,) * 26 and spec(vocab_size=(3,)).vocab_mode == "top_n"
    assert spec(format="tfds", input="criteo").tfds_name == "criteo"
    assert spec(format="tfds", input="criteo", tfds_name="other").tfds_name == "other"
    assert spec(tfds_name=None).tfds_name is None  # only the tfds format reads it
    assert spec(beam_args=["--runner", "DirectRunner"]).beam_args == ("--runner", "DirectRunner")
    assert spec(output="gs://b/o").layout == md.ExamplesLayout("gs://b/o")


def test_spec_is_frozen():
    with pytest.raises(AttributeError):
        spec().eval_fraction = 0.5


def test_the_cli_parses_flags_into_the_spec():
    argv = ["--input", "in.tsv", "--output", "out", "--hash-buckets", "7", "--eval-fraction", "0.3", "--num-shards",
            "2", "--compression-level", "9", "--overwrite", "--no-progress", "--runner", "DirectRunner",
            "--direct_num_workers", "2"]
    assert pipeline.spec_from_argv(argv) == spec(
        hash_buckets=(7,), eval_fraction=0.3, num_shards=2, compression_level=9, overwrite=True, progress=False,
        beam_args=("--runner", "DirectRunner", "--direct_num_workers", "2"))
    assert pipeline.spec_from_argv(["--input", "in.tsv", "--output", "out", "--negative-counts", "reject"]) == spec(
        negative_counts="reject")
    assert spec().negative_counts == "clamp"
    assert pipeline.spec_from_argv(["--input", "in.tsv", "--output", "out"]) == spec()


@pytest.mark.parametrize("flags, message", [
    (["--eval-fraction", "2"], "--eval-fraction must be in [0, 1], got 2.0"),
    (["--hash-buckets", "1,2"], "--hash-buckets takes one value or 26 comma-separated values, each >= 2; got '1,2'"),
    (["--hash-buckets", "a"], "--hash-buckets takes integers, got 'a'"),
    (["--vocab-size", "0"], "--vocab-size takes one value or 26 comma-separated values, each >= 1; got '0'"),
    (["--min-frequency", "0"], "--min-frequency must be >= 1, got 0"),
    (["--num-shards", "0"], "--num-shards must be >= 1, got 0"),
])
def test_the_cli_names_the_flag_of_a_bad_field(flags, message):
    with pytest.raises(UsageError) as err:
        pipeline.spec_from_argv(["--input", "in.tsv", "--output", "out", *flags])
    assert str(err.value) == message


def test_examples_layout_paths():
    layout = md.ExamplesLayout("/data/prep")
    assert layout.split_dir("train") == "/data/prep/Split-train"
    assert layout.train_pattern == "/data/prep/Split-train/*"
    assert layout.eval_pattern == "/data/prep/Split-eval/*"
    assert layout.metadata_path == "/data/prep/metadata.json"
    assert layout.vocab_dir == "/data/prep/vocab"
    assert layout.vocab_file("cat_3") == "/data/prep/vocab/cat_3.txt"
    assert layout.dead_letter_dir == "/data/prep/dead_letter"
    assert md.ExamplesLayout.of_split_pattern(layout.eval_pattern) == layout
    with pytest.raises(ValueError, match="unknown split 'test'"):
        layout.split_dir("test")


def test_execute_writes_what_the_layout_describes(tmp_path):
    the_spec = spec(input=FIXTURE, output=str(tmp_path / "o"), hash_buckets=(11,), eval_fraction=0.3, num_shards=2,
                    progress=False)
    meta = pipeline.execute(the_spec)
    layout = the_spec.layout
    assert layout.metadata() == meta
    assert sum(layout.row_counts.values()) == len(good_rows(fixture_lines()))
    for split in md.SPLITS:
        assert sorted(os.listdir(layout.split_dir(split))) == [f"data-00000-0000{i}.tfrecord.gz" for i in range(2)]
    assert os.listdir(layout.dead_letter_dir) and not os.path.exists(layout.vocab_dir)
    with open(layout.metadata_path, encoding="utf-8") as f:
        options = json.load(f)["options"]
    assert options == {
        "vocab_mode": "hash", "vocab_size": None, "min_frequency": None, "hash_buckets": [11] * 26,
        "eval_fraction": 0.3, "num_shards": 2, "compression_level": the_spec.compression_level,
        "tfds_name": None, "tfds_data_dir": None, "tfds_split": "train", "beam_args": [], "negative_counts": "clamp",
    }
