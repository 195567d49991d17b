"""The batched pipeline keeps the outputs of the row-at-a-time one it replaced.

`tests/fixtures/preprocess_golden.json` was captured from the previous
implementation (see `golden.py`) on the fixture and on a fixture of unusual
spellings and bad rows: ids, dense values, splits, vocabularies and dead
letters (line numbers and reasons) must stay exactly the same. Three outputs
changed on purpose, and are checked against independent references instead:
- dead-letter reasons use the words serving uses (issue 18): `golden.renamed` maps each
  captured reason to today's wording, everything else about the record is equal;
- hash mode uses FarmHash (which the serving graph can run): ids are checked
  against `tf.strings.to_hash_bucket_fast`, everything else against the capture;
- `--vocab-size N` broke ties at the cut in favour of the larger values while
  numbering ties by ascending value; it now keeps the first N values of the
  documented order (count descending, value ascending). The expected
  vocabulary is recomputed from the captured min-frequency-1 run (all values,
  decoded back to strings and counted).
"""

import json

import numpy as np
import pytest
import tensorflow as tf

from components.preprocess.pipeline import main
from tests.components.preprocess.golden import GOLDEN_CASES, GOLDEN_FILE, renamed, run_case

with open(GOLDEN_FILE, encoding="utf-8") as _f:
    GOLDEN = json.load(_f)["cases"]


def _without_ids(rows):
    return sorted(([r[0], r[1], r[3]] for r in rows), key=json.dumps)


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_outputs_equal_the_captured_ones(tmp_path, name):
    fixture, flags = GOLDEN_CASES[name]
    got = run_case(main, fixture, flags, str(tmp_path / "out"))
    want = GOLDEN[name]
    if "--vocab-size" in flags:
        want = _top_n_reference(GOLDEN[f"{fixture}:min_frequency_1"], int(flags[1]))
    for key in ("vocab_sizes", "row_counts", "dead_letter_count", "vocab"):
        assert got[key] == want[key], key
    assert got["dead_letter"] == [renamed(record) for record in want["dead_letter"]]
    for split in ("train", "eval"):
        if "--hash-buckets" in flags:
            assert _without_ids(got[split]) == _without_ids(want[split])
        else:
            assert got[split] == want[split]


def _top_n_reference(all_values: dict, n: int) -> dict:
    """The capture of a min-frequency-1 run with its ids renumbered for `--vocab-size n`."""
    import collections
    import copy

    ref = copy.deepcopy(all_values)
    rows = ref["train"] + ref["eval"]
    for i in range(26):
        key = f"cat_{i}"
        values = [""] + all_values["vocab"][key]
        counts = collections.Counter(values[row[2][i][0]] for row in rows if row[2][i][0])
        kept = sorted(counts, key=lambda v: (-counts[v], v.encode("utf-8")))[:n]
        new_id = {v: k for k, v in enumerate(kept, start=1)}
        for row in rows:
            row[2][i] = [new_id.get(values[row[2][i][0]], 0)]
        ref["vocab"][key] = kept
        ref["vocab_sizes"][key] = len(kept) + 1
    for split in ("train", "eval"):
        ref[split] = sorted(ref[split], key=json.dumps)
    return ref


def test_hash_ids_are_farmhash_buckets(tmp_path):
    """Hash mode: id = 1 + tf.strings.to_hash_bucket_fast(value, N - 1), 0 for missing, row by row."""
    from tests.components.preprocess.helpers import FIXTURE, fixture_lines, good_rows, read_examples

    out = str(tmp_path / "h")
    assert main(["--input", FIXTURE, "--output", out, "--hash-buckets", "7", "--eval-fraction", "0"]) == 0
    rows = good_rows(fixture_lines())
    want = sorted(
        tuple(0 if not v else 1 + int(tf.strings.to_hash_bucket_fast([v], 6).numpy()[0]) for v in cats)
        for _, _, cats in rows
    )
    got = sorted(tuple(ex[f"cat_{i}"][0] for i in range(26)) for ex in read_examples(f"{out}/Split-train/*"))
    assert got == want
    assert np.unique(np.array(got)).size > 2


@pytest.mark.parametrize("fixture", ["criteo_small.tsv", "criteo_tricky.tsv"])
def test_clamp_keeps_the_rows_reject_dead_letters(tmp_path, fixture):
    """Under --negative-counts clamp (the default) the capture's negative-count dead letters become rows whose
    negative counts are 0 (log1p(0) = 0.0); every other row, value and dead letter stays as captured."""
    import math

    got = run_case(main, fixture, ["--hash-buckets", "7"], str(tmp_path / "out"), negative_counts="clamp")
    want = GOLDEN[f"{fixture}:hash_7"]
    negative = [d for d in want["dead_letter"] if d["reason"].startswith("negative count")]
    assert negative, "the fixture should hold a negative count"
    assert got["dead_letter"] == [renamed(d) for d in want["dead_letter"] if d not in negative]
    added = []
    for record in negative:
        fields = record["raw"].split("\t")
        dense = [0.0 if not f.strip() else math.log1p(max(0, int(f))) for f in fields[1:14]]
        added.append([[int(fields[0])], [float(np.float32(x)) for x in dense]])
    rows = lambda split_rows: sorted(([r[0], r[1]] for r in split_rows), key=json.dumps)
    assert rows(got["train"] + got["eval"]) == rows(want["train"] + want["eval"] + added)
    assert sum(got["row_counts"].values()) == sum(want["row_counts"].values()) + len(negative)
