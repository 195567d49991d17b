"""Raw Criteo logs for the serving tests: a preprocess output built by hand and a Python reference.

`reference_features` applies the preprocess rules (DESIGN.md 4.1) with plain
Python: str.strip(), int(), math.log1p, a dict per vocabulary, and FarmHash's
Fingerprint64 from pyfarmhash (the hash behind tf.strings.to_hash_bucket_fast).
Nothing here imports components.trainer.
"""

from __future__ import annotations

import math
import os

import numpy as np
import tensorflow as tf
from farmhash import fingerprint64

from components.preprocess.metadata import (
    CATEGORICAL_KEYS, DENSE_KEY, NUM_CATEGORICAL, NUM_DENSE, RAW_CATEGORICAL, RAW_DENSE, VOCAB_DIR, Metadata,
    write_metadata,
)

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures")
HASH_BUCKETS = [5 + 3 * i for i in range(NUM_CATEGORICAL)]


def fixture_lines(name: str = "criteo_small.tsv") -> list[bytes]:
    with open(os.path.join(FIXTURES, name), "rb") as f:
        return f.read().split(b"\n")[:-1]


def good_lines() -> list[bytes]:
    """The 40-field lines of criteo_small.tsv that the preprocess accepts, plus rows with unusual spellings."""
    lines = []
    for line in fixture_lines():
        try:
            fields = line.decode("utf-8").split("\t")
        except UnicodeDecodeError:
            continue
        if len(fields) == 40 and fields[0] in ("0", "1") and all(f.strip().isdigit() or not f.strip() for f in fields[1:14]):
            lines.append(line)
    fields = lines[0].decode().split("\t")
    fields[1:4] = [" 12", "\u00a03\u00a0", "+5"]          # whitespace (Unicode too) and a sign
    fields[4:7] = ["1_000", "\u0661\u0662", "-0"]          # what Python's int() also accepts
    fields[14:17] = [" a1b2c3d4 ", "", "caf\u00e9"]
    fields[39] = fields[39] + "\r"                         # a CRLF line
    lines.append("\t".join(fields).encode("utf-8"))
    lines.append(b"\t".join([b"1"] + [b""] * 39))           # everything missing
    return lines


def vocabularies(lines: list[bytes], rows: int = 20) -> dict[str, list[str]]:
    """Per feature, the sorted distinct stripped values of the first `rows` lines (later lines have unseen ones)."""
    vocab = {key: set() for key in CATEGORICAL_KEYS}
    for line in lines[:rows]:
        for key, value in zip(CATEGORICAL_KEYS, line.decode("utf-8").split("\t")[-NUM_CATEGORICAL:]):
            if value.strip():
                vocab[key].add(value.strip())
    vocab[CATEGORICAL_KEYS[-1]] = set()  # an empty vocabulary: every id of that feature is 0
    return {key: sorted(values) for key, values in vocab.items()}


def write_preprocess_dir(root: str, mode: str, vocab: dict[str, list[str]] | None = None,
                         negative_counts: str | None = None) -> Metadata:
    """metadata.json (and vocab/cat_i.txt in the vocabulary modes) as the preprocess writes them.

    `negative_counts` is recorded in the options when given; None writes metadata as a preprocess from before
    the policy existed did.
    """
    os.makedirs(root, exist_ok=True)
    if mode == "hash":
        sizes, options = HASH_BUCKETS, {"vocab_mode": "hash", "hash_buckets": list(HASH_BUCKETS)}
    else:
        sizes, options = [len(vocab[key]) + 1 for key in CATEGORICAL_KEYS], {"vocab_mode": mode}
        os.makedirs(os.path.join(root, VOCAB_DIR), exist_ok=True)
        for key in CATEGORICAL_KEYS:
            with open(os.path.join(root, VOCAB_DIR, f"{key}.txt"), "wb") as f:
                f.write("".join(f"{v}\n" for v in vocab[key]).encode("utf-8"))
    if negative_counts is not None:
        options["negative_counts"] = negative_counts
    metadata = Metadata(vocab_sizes=dict(zip(CATEGORICAL_KEYS, sizes)), row_counts={"train": 0, "eval": 0},
                        dead_letter_count=0, input_pattern="test", format="tsv", options=options)
    write_metadata(metadata, root)
    return metadata


def _hash_id(value: str, buckets: int) -> int:
    return 1 + fingerprint64(value) % (buckets - 1)


def reference_features(fields: list[str], mode: str, vocab: dict[str, list[str]] | None = None):
    """The 13 counts and 26 values of one row (no label) -> (dense float32 [13], ids int64 [26])."""
    assert len(fields) == NUM_DENSE + NUM_CATEGORICAL
    dense = [np.float32(math.log1p(int(t.strip()))) if t.strip() else np.float32(0) for t in fields[:NUM_DENSE]]
    ids = []
    for i, value in enumerate(v.strip() for v in fields[NUM_DENSE:]):
        if not value:
            ids.append(0)
        elif mode == "hash":
            ids.append(_hash_id(value, HASH_BUCKETS[i]))
        else:
            table = {v: k for k, v in enumerate(vocab[CATEGORICAL_KEYS[i]], start=1)}
            ids.append(table.get(value, 0))
    return np.asarray(dense, np.float32), np.asarray(ids, np.int64)


def reference_batch(lines: list[bytes], mode: str, vocab=None) -> dict[str, np.ndarray]:
    """TSV lines (40 or 39 fields) -> the features dict the model takes."""
    rows = [reference_features(line.decode("utf-8").split("\t")[-(NUM_DENSE + NUM_CATEGORICAL):], mode, vocab)
            for line in lines]
    features = {DENSE_KEY: np.stack([dense for dense, _ in rows])}
    ids = np.stack([i for _, i in rows])
    features.update({key: ids[:, i] for i, key in enumerate(CATEGORICAL_KEYS)})
    return features


def transformed_example(features: dict[str, np.ndarray], row: int) -> bytes:
    """A preprocess-output tf.Example (dense, cat_i, label 0) for one row of a features dict."""
    example = tf.train.Example()
    feature = example.features.feature
    feature["label"].int64_list.value.append(0)
    feature[DENSE_KEY].float_list.value.extend(features[DENSE_KEY][row].tolist())
    for key in CATEGORICAL_KEYS:
        feature[key].int64_list.value.append(int(features[key][row]))
    return example.SerializeToString()


def raw_example(line: bytes, **overrides) -> bytes:
    """A raw-log tf.Example (I1..I13 int64, C1..C26 bytes, label) for a TSV line; empty fields are left out.

    `overrides` maps a raw name to a list of values (an empty list adds the feature with no values).
    """
    fields = line.decode("utf-8").split("\t")
    label, fields = (fields[0], fields[1:]) if len(fields) == 40 else (None, fields)
    example = tf.train.Example()
    feature = example.features.feature
    if label is not None and label.strip():
        feature["label"].int64_list.value.append(int(label))
    for name, text in zip(RAW_DENSE, fields[:NUM_DENSE]):
        if text.strip():
            feature[name].int64_list.value.append(int(text.strip()))
    for name, text in zip(RAW_CATEGORICAL, fields[NUM_DENSE:]):
        if text:
            feature[name].bytes_list.value.append(text.encode("utf-8"))
    for name, values in overrides.items():
        feature[name].Clear()
        target = feature[name].int64_list if name in RAW_DENSE else feature[name].bytes_list
        target.value.extend(values)
        if not values:  # present but empty
            target.SetInParent()
    return example.SerializeToString()
