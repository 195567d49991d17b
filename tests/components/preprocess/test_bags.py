"""Bag (multi-hot) columns through preprocess: TSV and CSV, hash and vocabulary modes, caps, metadata.

Expectations come from bag_reference.py (plain Python: str.split, str.strip, collections.Counter, FarmHash's
Fingerprint64), never from the pipeline's code.
"""

import csv
import io
import json

import numpy as np
import pyarrow as pa
import pytest

from components.preprocess import bags, pipeline
from components.preprocess.metadata import load_metadata
from components.preprocess.spec import PreprocessSpec, SpecError
from tests.components.preprocess import bag_reference as ref

BAG_FLAGS = ["--multi-hot-columns", "C21,C3", "--max-bag-length", "C21:5", "--eval-fraction", "0.3", "--no-progress"]


def _run(tmp_path, lines, *flags, name="out", suffix=".tsv", text=None):
    src = tmp_path / f"{name}{suffix}"
    src.write_text(text if text is not None else "".join(line + "\n" for line in lines), encoding="utf-8")
    out = str(tmp_path / name)
    assert pipeline.main(["--input", str(src), "--output", out, *flags]) == 0
    return out


@pytest.mark.parametrize("mode", ["hash", "vocab"])
def test_bag_ids_match_the_python_reference(tmp_path, mode):
    lines = ref.bag_lines()
    flags = ["--hash-buckets", "7"] if mode == "hash" else ["--min-frequency", "2"]
    out = _run(tmp_path, lines, *BAG_FLAGS, *flags)
    rows = ref.good_rows(lines)
    vocab = ref.vocabularies(rows, 2) if mode == "vocab" else None
    assert ref.read_ids(out) == ref.expected_ids(rows, mode, 7, vocab)
    meta = load_metadata(out)
    assert sum(meta.row_counts.values()) + meta.dead_letter_count == len(lines)
    assert meta.dead_letter_count == 2
    assert meta.multi_hot_keys == ("cat_2", "cat_20")
    assert meta.feature_spec["cat_20"]["ragged"] and meta.feature_spec["cat_0"] == {"dtype": "int64", "shape": [1]}
    assert meta.options["multi_hot_separator"] == "," and meta.options["multi_hot_columns"] == ["C3", "C21"]
    assert meta.options["max_bag_length"] == {"cat_2": None, "cat_20": 5}
    if mode == "vocab":  # a bag column's vocabulary file has the usual layout: line k holds the value with id k
        with open(f"{out}/vocab/cat_20.txt", encoding="utf-8") as f:
            assert f.read().split("\n")[:-1] == vocab[20]
    # Stats against the raw lines: elements before and after the cap.
    uncapped = ref.good_rows(lines, caps={})
    lengths = np.array([len(cats[20]) for _, cats in uncapped])
    assert meta.bag_stats["cat_20"] == {
        "values": int(np.minimum(lengths, 5).sum()), "empty_bags": int((lengths == 0).sum()),
        "truncated_bags": int((lengths > 5).sum()), "truncated_values": int(np.maximum(lengths - 5, 0).sum())}
    assert meta.bag_stats["cat_20"]["truncated_bags"] > 0 and meta.bag_stats["cat_2"]["empty_bags"] > 0
    assert meta.bag_stats["cat_2"]["truncated_values"] == 0


def test_one_hot_run_writes_no_bag_metadata(tmp_path):
    """Without --multi-hot-columns, a bag-looking field is one value and metadata.json has no bag keys."""
    out = _run(tmp_path, ref.bag_lines(rows=20), "--hash-buckets", "7", "--no-progress")
    with open(f"{out}/metadata.json", encoding="utf-8") as f:
        meta = json.load(f)
    assert "multi_hot_keys" not in meta and "bag_stats" not in meta and "multi_hot_separator" not in meta["options"]
    rows = ref.good_rows(ref.bag_lines(rows=20), bags=())
    assert ref.read_ids(out) == ref.expected_ids(rows, "hash")


@pytest.mark.parametrize("separator", ["|", ","])
def test_csv_bags(tmp_path, separator):
    """CSV: the default separator is '|', so bag fields need no quotes; ',' works when the field is quoted."""
    lines = ref.bag_lines(rows=40, separator=separator)[:-2]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["label", *[f"I{i}" for i in range(1, 14)], *[f"C{i}" for i in range(1, 27)]])
    writer.writerows(line.split("\t") for line in lines)
    flags = [*BAG_FLAGS, "--format", "csv", "--hash-buckets", "7"]
    if separator == ",":
        flags += ["--multi-hot-separator", ","]
    out = _run(tmp_path, None, *flags, suffix=".csv", text=buffer.getvalue())
    assert ref.read_ids(out) == ref.expected_ids(ref.good_rows(lines, separator), "hash")
    assert load_metadata(out).options["multi_hot_separator"] == separator


def test_synth_meta_names_the_bag_columns(tmp_path):
    """With no --multi-hot-columns, the columns (and separator) come from the synth .meta.json beside the input."""
    lines = ref.bag_lines(rows=30)
    (tmp_path / "in.tsv.meta.json").write_text(json.dumps({"multi_hot_columns": ["C3", "C21"],
                                                            "multi_hot_separator": ","}))
    out = _run(tmp_path, lines, "--hash-buckets", "7", "--no-progress", name="in")
    assert load_metadata(out).multi_hot_keys == ("cat_2", "cat_20")
    assert ref.read_ids(out) == ref.expected_ids(ref.good_rows(lines, caps={}), "hash")


@pytest.mark.parametrize("value, want", [
    ("a,,b", ["a", "b"]), (" a , b ", ["a", "b"]), ("a,b,", ["a", "b"]), ("", []), (",", []), (" ", []),
    ("a,a", ["a", "a"]), ("caf\u00e9,\u00a0x\u00a0", ["caf\u00e9", "x"]), (("a ", "", None, "b"), ["a", "b"]),
])
def test_split_bag_rules(value, want):
    assert bags.split_bag(value, ",") == want


def test_arrow_clean_and_truncate_equal_python():
    rng = np.random.default_rng(0)
    alphabet = ["a", " b", "", "c ", "\u00e9", "\u3000d", "e"]
    rows = [None if rng.random() < 0.1 else [alphabet[i] for i in rng.integers(0, len(alphabet), rng.integers(0, 9))]
            for _ in range(300)]
    cleaned = bags.clean_lists(pa.array(rows, pa.list_(pa.string())))
    want = [bags_ref for bags_ref in ([e.strip() for e in (r or []) if e.strip()] for r in rows)]
    assert cleaned.to_pylist() == want
    capped, stats = bags.truncate(cleaned, 3)
    assert capped.to_pylist() == [w[:3] for w in want]
    assert stats == {"empty_bags": sum(not w for w in want), "truncated_bags": sum(len(w) > 3 for w in want),
                     "truncated_values": sum(max(len(w) - 3, 0) for w in want), "values": sum(min(len(w), 3) for w in want)}


@pytest.mark.parametrize("kwargs, field, match", [
    ({"multi_hot_columns": ("C27",)}, "multi_hot_columns", "C27"),
    ({"multi_hot_columns": ("C3", "c3")}, "multi_hot_columns", "twice"),
    ({"multi_hot_columns": ("C3",), "multi_hot_separator": "\t"}, "multi_hot_separator", "'\\\\t'"),
    ({"multi_hot_columns": ("C3",), "max_bag_length": "C4:2"}, "max_bag_length", "C4"),
    ({"multi_hot_columns": ("C3",), "max_bag_length": 0}, "max_bag_length", ">= 1"),
    ({"multi_hot_columns": (), "max_bag_length": 5}, "max_bag_length", "not bag columns"),
    ({"format": "csv", "multi_hot_columns": ("C3",), "multi_hot_separator": '"'}, "multi_hot_separator", "'\"'"),
])
def test_bad_bag_options_name_the_field(kwargs, field, match):
    with pytest.raises(SpecError, match=match) as err:
        PreprocessSpec(input="x", output="y", **kwargs)
    assert err.value.field == field


def test_caps_per_column_and_default():
    spec = PreprocessSpec(input="x", output="y", multi_hot_columns=("C21", "C3", "C5"), max_bag_length="20,C21:100")
    assert spec.bag_layout.indices == (2, 4, 20) and spec.bag_layout.caps == (20, 20, 100)
    assert PreprocessSpec(input="x", output="y", format="csv").multi_hot_separator == "|"
