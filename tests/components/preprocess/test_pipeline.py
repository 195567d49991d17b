"""End to end on the fixture: every row accounted for, values decoded back independently."""

import collections
import json
import os
import shutil

import pytest

from components.preprocess import pipeline
from tests.components.preprocess.helpers import FIXTURE, dead_letters, decode_rows, fixture_lines, good_rows, read_examples


def _run(tmp_path, name, *extra, vocab=("--min-frequency", "1")):
    out = str(tmp_path / name)
    assert pipeline.main(["--input", FIXTURE, "--output", out, *vocab, "--eval-fraction", "0.3", *extra]) == 0
    return out


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("pre"), "out")


def test_every_row_accounted_for(first_run):
    lines = fixture_lines()
    good = good_rows(lines)
    decoded = decode_rows(first_run, "train") + decode_rows(first_run, "eval")
    dead = dead_letters(first_run)
    assert len(decoded) + len(dead) == len(lines)
    expected = [(label, tuple(c or 0 for c in counts), cats) for label, counts, cats in good]
    assert collections.Counter(decoded) == collections.Counter(expected)
    bad_numbers = {i for i, raw in enumerate(lines, start=1) if raw not in {l for l in lines if good_rows([l])}}
    assert {d["line_number"] for d in dead} == bad_numbers
    assert all(d["source"].endswith("criteo_small.tsv") and d["reason"] for d in dead)
    meta = json.load(open(os.path.join(first_run, "metadata.json")))
    assert meta["row_counts"]["train"] + meta["row_counts"]["eval"] == len(good)
    assert meta["dead_letter_count"] == len(lines) - len(good)
    assert meta["row_counts"]["eval"] > 0 and meta["row_counts"]["train"] > 0


def test_vocab_ids_and_sizes(first_run):
    good = good_rows(fixture_lines())
    meta = json.load(open(os.path.join(first_run, "metadata.json")))
    for i in range(26):
        distinct = {cats[i] for _, _, cats in good if cats[i]}
        assert meta["vocab_sizes"][f"cat_{i}"] == len(distinct) + 1
    examples = read_examples(os.path.join(first_run, "Split-*", "*.tfrecord.gz"))
    for ex in examples:
        assert all(0 <= ex[f"cat_{i}"][0] < meta["vocab_sizes"][f"cat_{i}"] for i in range(26))
        assert len(ex["dense"]) == 13 and len(ex["label"]) == 1


def test_top_n_maps_rare_values_to_oov(tmp_path):
    out = _run(tmp_path, "top1", vocab=("--vocab-size", "1"))
    good = good_rows(fixture_lines())
    counts = collections.Counter(cats[0] for _, _, cats in good if cats[0])
    top = min(counts, key=lambda v: (-counts[v], v))
    meta = json.load(open(os.path.join(out, "metadata.json")))
    assert meta["vocab_sizes"]["cat_0"] == 2
    ids = collections.Counter(ex["cat_0"][0] for ex in read_examples(os.path.join(out, "Split-*", "*.gz")))
    assert ids[1] == counts[top]
    assert ids[0] == len(good) - counts[top]  # missing and out-of-vocabulary both 0


def test_hash_buckets(tmp_path):
    out = str(tmp_path / "h")
    assert pipeline.main(["--input", FIXTURE, "--output", out, "--hash-buckets", "7"]) == 0
    meta = json.load(open(os.path.join(out, "metadata.json")))
    assert set(meta["vocab_sizes"].values()) == {7}
    good = good_rows(fixture_lines())
    examples = read_examples(os.path.join(out, "Split-*", "*.gz"))
    zero_expected = sum(1 for _, _, cats in good if cats[3] == "")
    assert sum(1 for ex in examples if ex["cat_3"][0] == 0) == zero_expected
    assert all(0 <= ex["cat_3"][0] < 7 for ex in examples)
    assert not os.path.exists(os.path.join(out, "vocab"))


def test_split_is_deterministic_across_runs_and_runner_modes(first_run, tmp_path):
    second = _run(tmp_path, "again", "--direct_num_workers", "2", "--direct_running_mode", "multi_threading")
    for split in ("train", "eval"):
        assert collections.Counter(decode_rows(first_run, split)) == collections.Counter(decode_rows(second, split))


def test_csv_with_header_in_other_order(tmp_path):
    header = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
    order = list(reversed(range(40)))
    good = [l for l in fixture_lines() if good_rows([l])][:12]
    path = tmp_path / "in.csv"
    with open(path, "w") as f:
        f.write(",".join(header[i] for i in order) + "\n")
        for raw in good:
            fields = raw.decode().split("\t")
            f.write(",".join(fields[i] for i in order) + "\n")
        f.write("1,2,3\n")
    out = str(tmp_path / "csvout")
    assert pipeline.main(["--input", str(path), "--output", out, "--format", "csv", "--min-frequency", "1"]) == 0
    decoded = decode_rows(out, "train") + decode_rows(out, "eval")
    expected = [(lab, tuple(c or 0 for c in counts), cats) for lab, counts, cats in good_rows(good)]
    assert collections.Counter(decoded) == collections.Counter(expected)
    assert [d["line_number"] for d in dead_letters(out)] == [len(good) + 2]


@pytest.mark.parametrize(
    "make_args, message",
    [
        (lambda d: ["--input", str(d / "nothing*.tsv"), "--output", str(d / "o")], "matches no files"),
        (lambda d: ["--input", FIXTURE, "--output", str(d / "full")], "already has data"),
        (lambda d: ["--input", str(d / "bad.csv"), "--output", str(d / "o"), "--format", "csv"], "lacks columns"),
        (lambda d: ["--input", "no_such_dataset_xyz", "--output", str(d / "o"), "--format", "tfds"], "no_such_dataset_xyz"),
        (lambda d: ["--input", FIXTURE, "--output", str(d / "o"), "--hash-buckets", "1,2"], "--hash-buckets"),
    ],
)
def test_errors_before_work(tmp_path, capsys, make_args, message):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("old")
    (tmp_path / "bad.csv").write_text("label,I1\n1,2\n")
    assert pipeline.main(make_args(tmp_path)) != 0
    err = capsys.readouterr().err
    assert err.startswith("embedopt preprocess:") and message in err
    assert not (tmp_path / "o").exists()


def test_overwrite_replaces_earlier_output(first_run, tmp_path):
    out = str(tmp_path / "copy")
    shutil.copytree(first_run, out)
    assert pipeline.main(["--input", FIXTURE, "--output", out, "--hash-buckets", "5", "--overwrite"]) == 0
    assert not os.path.exists(os.path.join(out, "vocab"))
    assert json.load(open(os.path.join(out, "metadata.json")))["vocab_sizes"]["cat_0"] == 5
