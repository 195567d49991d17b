"""The raw-log transformation run eagerly: Python's rules, the preprocess's own output, bad metadata.

Expectations come from plain Python (str.strip, int, math.log1p, dicts,
FarmHash), from tests/fixtures/preprocess_golden.json (the previous preprocess
on the fixtures) and from running today's preprocess on the tricky fixture,
never from the code under test.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import os
import re

import numpy as np
import pytest
import tensorflow as tf

from components.preprocess.metadata import CATEGORICAL_KEYS, DENSE_KEY, Metadata, load_metadata
from components.trainer.raw_features import RawFeatureTransform, dense_from_text, strip
from tests.components.preprocess.golden import renamed
from tests.components.trainer import raw_logs

GOLDEN_FILE = os.path.join(raw_logs.FIXTURES, "preprocess_golden.json")
# float32(log1p(n)) from float64: the same rounding in Python and TensorFlow, up to one float32 ulp.
DENSE_RTOL = 2.0**-23


def _transform(tmp_path, mode, vocab=None) -> RawFeatureTransform:
    metadata = raw_logs.write_preprocess_dir(str(tmp_path), mode, vocab)
    return RawFeatureTransform(metadata, str(tmp_path))


def _assert_features_equal(got, want):
    np.testing.assert_allclose(got[DENSE_KEY].numpy(), want[DENSE_KEY], rtol=DENSE_RTOL, atol=0)
    for key in CATEGORICAL_KEYS:
        np.testing.assert_array_equal(got[key].numpy(), want[key], err_msg=key)


@pytest.mark.parametrize("mode", ["hash", "top_n", "min_frequency"])
def test_tsv_and_raw_examples_match_the_python_reference(tmp_path, mode):
    lines = raw_logs.good_lines()
    vocab = None if mode == "hash" else raw_logs.vocabularies(lines)
    transform = _transform(tmp_path, mode, vocab)
    want = raw_logs.reference_batch(lines, mode, vocab)
    _assert_features_equal(transform.from_tsv(lines), want)
    _assert_features_equal(transform.from_examples([raw_logs.raw_example(line) for line in lines]), want)
    # Both kinds of ids occur: known values, and unseen or missing ones (0).
    ids = np.stack([want[key] for key in CATEGORICAL_KEYS])
    assert (ids > 0).any() and (ids == 0).any()


@pytest.mark.parametrize("text", [
    "0", "7", "00042", " 12 ", "\u00a03\u00a0", "\t5\r", "+5", "-0", "1_000", "1_2_3",
    "\u0661\u0662", "\uff11\uff12", "\U0001d7ce\U0001d7cf", "12345678901234567890123", "9" * 300,
])
def test_count_spellings_that_python_int_accepts(text):
    want = np.float32(math.log1p(int(text.strip())))
    got = dense_from_text(tf.constant([[text] + [""] * 12]))
    np.testing.assert_allclose(got.numpy()[0], [want] + [0.0] * 12, rtol=DENSE_RTOL, atol=0)


@pytest.mark.parametrize("text", [
    "1.5", "0x10", "abc", "1e3", "inf", "nan", "1__0", "_1", "1_", "+", "-", "--1", "+-1", "1 2", "\u0661.\u0662",
    "\u00bd", "\u00b2",
])
def test_count_spellings_that_python_int_rejects(text):
    with pytest.raises(ValueError):
        int(text.strip())
    with pytest.raises(tf.errors.InvalidArgumentError, match="non-integer count in I4") as err:
        dense_from_text(tf.constant([[""] * 3 + [text] + [""] * 9]))
    if text.isascii():  # eagerly the message is a bytes repr, which escapes the rest
        assert f"I4: {text.strip()} (row 0 of the batch)" in err.value.message


@pytest.mark.parametrize("text", ["-1", " -7", "-0_1", "-\u0661"])
def test_negative_counts_are_rejected(text):
    assert int(text.strip()) < 0
    with pytest.raises(tf.errors.InvalidArgumentError, match="negative count in I1"):
        dense_from_text(tf.constant([[text] + [""] * 12]))


@pytest.mark.parametrize("text", ["-1", " -7", "-0_1", "-\u0661", "-12345678901234567890123"])
def test_negative_counts_are_clamped_to_zero(text):
    got = dense_from_text(tf.constant([[text, "3"] + [""] * 11]), clamp_negative=True)
    np.testing.assert_allclose(got.numpy()[0], [0.0, np.float32(math.log1p(3))] + [0.0] * 11, rtol=DENSE_RTOL)


@pytest.mark.parametrize("policy", ["clamp", "reject", None])
def test_the_metadata_policy_rules_both_signatures(tmp_path, policy):
    """options["negative_counts"] decides; metadata without it (written before the flag existed) rejects."""
    metadata = raw_logs.write_preprocess_dir(str(tmp_path), "hash", negative_counts=policy)
    transform = RawFeatureTransform(metadata, str(tmp_path))
    good = raw_logs.good_lines()[0]
    fields = good.decode().split("\t")
    fields[2] = "-2"
    negative = "\t".join(fields).encode()
    example = raw_logs.raw_example(good, I2=[-2])
    if policy == "clamp":
        fields[2] = "0"
        want = raw_logs.reference_batch(["\t".join(fields).encode()], "hash")
        _assert_features_equal(transform.from_tsv([negative]), want)
        _assert_features_equal(transform.from_examples([example]), want)
    else:
        for call, value in ((transform.from_tsv, negative), (transform.from_examples, example)):
            with pytest.raises(tf.errors.InvalidArgumentError, match="negative count in I2: -2"):
                call([value])


def test_an_unknown_policy_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="negative_counts'\\] is 'drop'"):
        RawFeatureTransform(_metadata("hash", hash_buckets=[3] * 26, negative_counts="drop"), str(tmp_path))


def test_count_past_float64_is_rejected():
    with pytest.raises(tf.errors.InvalidArgumentError, match="count too large in I2: 400 digits"):
        dense_from_text(tf.constant([["", "9" * 400] + [""] * 11]))


def test_strip_removes_what_python_str_strip_removes():
    spaces = [chr(c) for c in range(0x110000) if chr(c).isspace()]
    kept = ["\u200b", "\ufeff", "\x00", "x"]  # not whitespace for Python
    texts = [f"{c}{c}a {c}b{c}" for c in spaces + kept]
    got = [t.decode("utf-8") for t in strip(tf.constant(texts)).numpy()]
    assert got == [t.strip() for t in texts]


def _golden_cases():
    with open(GOLDEN_FILE, encoding="utf-8") as f:
        cases = json.load(f)["cases"]
    cases = {name: {**case, "dead_letter": [renamed(r) for r in case["dead_letter"]]} for name, case in cases.items()}
    # Hash ids changed with the preprocess's switch to FarmHash; vocabulary ids did not.
    return {name: case for name, case in cases.items() if not name.endswith(":hash_7")}


# Serving refuses a line with the reason preprocess gave it (the text before ": "), except for these, which
# serving accepts: it ignores the label, and reads 39 fields as a line without one.
SERVING_ACCEPTS = ("label not 0/1", "wrong field count in line: 39 tab-separated fields")


def _assert_serving_reproduces(transform: RawFeatureTransform, fixture: str, output: dict) -> None:
    """`output` (golden.canonical's layout: examples, dead letters) is what serving makes of `fixture`'s lines."""
    lines = raw_logs.fixture_lines(fixture)
    dead = {record["line_number"]: record["reason"] for record in output["dead_letter"]}
    accepted = [line for number, line in enumerate(lines, start=1) if number not in dead]
    features = transform.from_tsv(accepted)
    got = sorted(zip([[int(features[key][i]) for key in CATEGORICAL_KEYS] for i in range(len(accepted))],
                     features[DENSE_KEY].numpy().tolist()))
    want = sorted(([ids[0] for ids in example[2]], example[1]) for example in output["train"] + output["eval"])
    assert [ids for ids, _ in got] == [ids for ids, _ in want]
    np.testing.assert_allclose([d for _, d in got], [d for _, d in want], rtol=DENSE_RTOL, atol=0)

    for number, reason in dead.items():
        if reason.startswith(SERVING_ACCEPTS):
            transform.from_tsv([lines[number - 1]])
            continue
        with pytest.raises(tf.errors.InvalidArgumentError) as err:
            transform.from_tsv([lines[number - 1]])
        summarized = re.search(r"Summarized data: (b'.*'|b\".*\")$", err.value.message, re.S).group(1)
        message = ast.literal_eval(summarized).decode("utf-8").removesuffix(" (row 0 of the batch)")
        assert message.split(": ")[0] == reason.split(": ")[0], (number, message, reason)
        if reason.startswith(("non-integer", "negative", "count too large")):
            assert message == reason


@pytest.mark.parametrize("name", sorted(_golden_cases()))
def test_preprocess_golden_output_is_reproduced(tmp_path, name):
    case = _golden_cases()[name]
    mode = "top_n" if name.endswith(":vocab_size_2") else "min_frequency"
    metadata = raw_logs.write_preprocess_dir(str(tmp_path), mode, case["vocab"])
    assert metadata.vocab_sizes == case["vocab_sizes"]
    _assert_serving_reproduces(RawFeatureTransform(metadata, str(tmp_path)), name.split(":")[0], case)


@pytest.mark.parametrize("negative_counts", ["clamp", "reject"])
@pytest.mark.parametrize("flags", [["--hash-buckets", "7"], ["--vocab-size", "2"], []])
def test_preprocess_output_is_reproduced(tmp_path, flags, negative_counts):
    """Serving reads the policy from the metadata: under clamp it keeps the fixture's negative-count row as
    preprocess did, under reject it refuses it as preprocess dead-lettered it."""
    from components.preprocess.pipeline import main
    from tests.components.preprocess.golden import run_case

    output = run_case(main, "criteo_tricky.tsv", flags, str(tmp_path), negative_counts=negative_counts)
    assert any(r["reason"].startswith("negative count") for r in output["dead_letter"]) == (negative_counts == "reject")
    _assert_serving_reproduces(RawFeatureTransform(load_metadata(str(tmp_path)), str(tmp_path)),
                               "criteo_tricky.tsv", output)


def _metadata(mode="min_frequency", sizes=None, **options) -> Metadata:
    sizes = sizes or [3] * len(CATEGORICAL_KEYS)
    return Metadata(vocab_sizes=dict(zip(CATEGORICAL_KEYS, sizes)), row_counts={"train": 0, "eval": 0},
                    dead_letter_count=0, input_pattern="test", format="tsv", options={"vocab_mode": mode, **options})


def test_vocabulary_file_and_metadata_must_agree(tmp_path):
    os.makedirs(tmp_path / "vocab")
    for key in CATEGORICAL_KEYS:
        (tmp_path / "vocab" / f"{key}.txt").write_text("a\nb\n" if key != "cat_7" else "a\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"cat_7.txt has 1 lines, but metadata.json's vocab size 3 says 2"):
        RawFeatureTransform(_metadata(), str(tmp_path))
    os.remove(tmp_path / "vocab" / "cat_7.txt")
    with pytest.raises(ValueError, match="no vocabulary file at .*cat_7.txt"):
        RawFeatureTransform(_metadata(), str(tmp_path))


@pytest.mark.parametrize("metadata,message", [
    (_metadata("hash", hash_buckets=[4] * 26), r"hash_buckets'\] \[4, .* must list the vocab_sizes \[3, "),
    (_metadata("hash"), r"hash_buckets'\] None must list"),
    (_metadata("hash", sizes=[1] * 26, hash_buckets=[1] * 26), "at least 2 buckets"),
    (_metadata("bloom"), "vocab_mode'] is 'bloom'"),
])
def test_bad_metadata_is_rejected(tmp_path, metadata, message):
    with pytest.raises(ValueError, match=message):
        RawFeatureTransform(metadata, str(tmp_path))


def _ragged_rows(features, n):
    """Features of n rows -> sorted [(ids of each feature as a tuple)]; bag keys are RaggedTensors."""
    rows = []
    for b in range(n):
        ids = []
        for key in CATEGORICAL_KEYS:
            value = features[key]
            if isinstance(value, tf.RaggedTensor):
                assert value.dtype == tf.int64 and value.row_splits.dtype == tf.int64 and value.ragged_rank == 1
                ids.append(tuple(value[b].numpy().tolist()))
            else:
                ids.append((int(value[b]),))
        rows.append(tuple(ids))
    return sorted(rows)


@pytest.mark.parametrize("flags", [["--hash-buckets", "7"], ["--min-frequency", "2"]])
def test_bags_from_tsv_and_raw_examples_match_preprocess(tmp_path, flags):
    """Bag columns C3 and C21 (cap 5): serve_tsv and serving_default give each kept row the ids preprocess wrote
    and the Python reference computes, as RaggedTensors."""
    from components.preprocess.pipeline import main
    from tests.components.preprocess import bag_reference as ref

    lines = ref.bag_lines(rows=60)
    (tmp_path / "in.tsv").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    out = str(tmp_path / "out")
    assert main(["--input", str(tmp_path / "in.tsv"), "--output", out, "--multi-hot-columns", "C3,C21",
                 "--max-bag-length", "C21:5", "--no-progress", *flags]) == 0
    transform = RawFeatureTransform(load_metadata(out), out)
    kept = [line.encode("utf-8") for line in lines if len(line.split("\t")) == 40 and line[0] in "01"]
    want = sorted(ids for _, ids in ref.read_ids(out))
    assert _ragged_rows(transform.from_tsv(kept), len(kept)) == want
    examples = []
    for line in kept:
        fields = line.decode("utf-8").split("\t")
        overrides = {name: [e.encode("utf-8") for e in fields[14 + i].split(",")] if fields[14 + i] else []
                     for i, name in ((2, "C3"), (20, "C21"))}
        examples.append(raw_logs.raw_example(line, **overrides))
    assert _ragged_rows(transform.from_examples(examples), len(kept)) == want
    rows = ref.good_rows(lines)
    vocab = ref.vocabularies(rows, 2) if flags[0] == "--min-frequency" else None
    assert want == sorted(ids for _, ids in ref.expected_ids(rows, "hash" if vocab is None else "vocab", 7, vocab))


def test_bag_elements_are_checked_for_utf8(tmp_path):
    metadata = raw_logs.write_preprocess_dir(str(tmp_path), "hash")
    metadata = dataclasses.replace(metadata, multi_hot_keys=("cat_20",), options={**metadata.options,
                                   "multi_hot_separator": ",", "max_bag_length": {"cat_20": None}})
    transform = RawFeatureTransform(metadata, str(tmp_path))
    good = raw_logs.good_lines()[0]
    with pytest.raises(tf.errors.InvalidArgumentError, match="invalid UTF-8 in C21"):
        transform.from_examples([raw_logs.raw_example(good, C21=[b"ok", b"\xff"])])
    # Many values in a bag feature are fine; in a one-hot one they are refused.
    features = transform.from_examples([raw_logs.raw_example(good, C21=[b"a", b" b ", b""])])
    assert features["cat_20"].numpy().tolist() == [[raw_logs._hash_id(v, raw_logs.HASH_BUCKETS[20])
                                                    for v in ("a", "b")]]
    with pytest.raises(tf.errors.InvalidArgumentError, match="more than one value"):
        transform.from_examples([raw_logs.raw_example(good, C20=[b"a", b"b"])])
