"""Rows with bag columns, and what prepress must make of them, in plain Python (no imports from the code under test).

The rules (docs/preprocess.md): a bag field is stripped, split at the separator, each element stripped, empty
ones dropped, the first `cap` kept; hash ids are 1 + Fingerprint64(value) % (N - 1); vocabulary ids number the
values seen at least K times by descending count, ties by ascending UTF-8 bytes, from 1; unknown -> 0.
"""

from __future__ import annotations

import collections
import glob
import os
import random

import tensorflow as tf
from farmhash import fingerprint64

NUM_CAT = 26
BAGS = (2, 20)  # C3 and C21
CAPS = {20: 5}  # --max-bag-length C21:5


def bag_lines(seed: int = 0, rows: int = 80, separator: str = ",") -> list[str]:
    """Criteo-like TSV lines whose C3 and C21 are bags, with odd forms: spaces around elements, empty elements,
    trailing separators, non-ASCII, repeated values, empty and long bags; and two bad rows."""
    rng = random.Random(seed)
    lines = []
    for r in range(rows):
        counts = [str(rng.randrange(50)) if rng.random() > 0.2 else "" for _ in range(13)]
        cats = []
        for f in range(NUM_CAT):
            if f in BAGS:
                elems = [f"v{rng.randrange(6)}" for _ in range(rng.randrange(12 if f == 20 else 5))]
                odd = rng.random()
                if odd < 0.15 and elems:
                    elems[0] = f" {elems[0]} "
                elif odd < 0.25:
                    elems.insert(rng.randrange(len(elems) + 1), "")
                elif odd < 0.3:
                    elems.append("caf\u00e9")
                cats.append(separator.join(elems))
            else:
                cats.append(f"x{rng.randrange(4)}" if rng.random() > 0.2 else "")
        lines.append("\t".join([str(r % 2), *counts, *cats]))
    lines.append("\t".join(["2", *[""] * 13, *["a,b"] * NUM_CAT]))  # bad label
    lines.append("\t".join(["1", *[""] * 13, *["a"] * 25]))  # 39 fields
    return lines


def elements(field: str, separator: str, cap: int | None) -> list[str]:
    out = [e.strip() for e in field.strip().split(separator) if e.strip()]
    return out[:cap] if cap is not None else out


def good_rows(lines: list[str], separator: str = ",", caps=CAPS, bags=BAGS) -> list[tuple]:
    """(label, [value or [elements]] * 26) of the rows preprocess keeps."""
    rows = []
    for line in lines:
        fields = line.split("\t")
        if len(fields) != 40 or fields[0] not in ("0", "1"):
            continue
        cats = [elements(v, separator, caps.get(f)) if f in bags else v.strip() for f, v in enumerate(fields[14:])]
        rows.append((int(fields[0]), cats))
    return rows


def hash_id(value: str, buckets: int) -> int:
    return 1 + fingerprint64(value) % (buckets - 1)


def vocabularies(rows, min_frequency: int = 1) -> list[list[str]]:
    vocab = []
    for f in range(NUM_CAT):
        counts = collections.Counter()
        for _, cats in rows:
            values = cats[f] if isinstance(cats[f], list) else [cats[f]] if cats[f] else []
            counts.update(values)
        kept = [v for v in counts if counts[v] >= min_frequency]
        vocab.append(sorted(kept, key=lambda v: (-counts[v], v.encode("utf-8"))))
    return vocab


def expected_ids(rows, mode: str, buckets: int = 7, vocab=None) -> list[tuple]:
    """Sorted (label, ids of each feature as a tuple) of `rows`."""
    out = []
    for label, cats in rows:
        ids = []
        for f, value in enumerate(cats):
            values = value if isinstance(value, list) else [value]
            if mode == "hash":
                got = [hash_id(v, buckets) if v else 0 for v in values]
            else:
                table = {v: k for k, v in enumerate(vocab[f], start=1)}
                got = [table.get(v, 0) for v in values]
            ids.append(tuple(got))
        out.append((label, tuple(ids)))
    return sorted(out)


def read_ids(output_dir: str) -> list[tuple]:
    """Sorted (label, ids of each feature) of every example of both splits, read with tf.train.Example."""
    out = []
    for path in sorted(glob.glob(os.path.join(output_dir, "Split-*", "*.tfrecord.gz"))):
        for raw in tf.data.TFRecordDataset(path, compression_type="GZIP"):
            feature = tf.train.Example.FromString(raw.numpy()).features.feature
            out.append((feature["label"].int64_list.value[0],
                        tuple(tuple(feature[f"cat_{f}"].int64_list.value) for f in range(NUM_CAT))))
    return sorted(out)
