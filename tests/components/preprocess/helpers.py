"""Independent readers of the fixture and of the pipeline output (no imports from the code under test)."""

from __future__ import annotations

import glob
import json
import math
import os
import re

import tensorflow as tf

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "criteo_small.tsv")


def fixture_lines(path=FIXTURE) -> list[bytes]:
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    return lines[:-1] if data.endswith(b"\n") else lines


def _count_ok(text: str, negative_counts: str) -> bool:
    pattern = r"-?[0-9]+" if negative_counts == "clamp" else r"[0-9]+"
    return text == "" or re.fullmatch(pattern, text) is not None


def is_good(raw: bytes, negative_counts: str = "clamp") -> bool:
    """Whether a fixture line is a valid row (the fixtures spell counts in plain ASCII digits)."""
    try:
        fields = raw.decode("utf-8").split("\t")
    except UnicodeDecodeError:
        return False
    if len(fields) != 40 or fields[0] not in ("0", "1"):
        return False
    return all(_count_ok(f, negative_counts) for f in fields[1:14])


def good_rows(lines: list[bytes], negative_counts: str = "clamp") -> list[tuple]:
    """(label, counts with None for missing, categorical strings) of the valid lines.

    `negative_counts` is the preprocess policy: "clamp" keeps a row with a negative count, as 0; "reject" drops it.
    """
    rows = []
    for raw in lines:
        if is_good(raw, negative_counts):
            fields = raw.decode().split("\t")
            rows.append((int(fields[0]), tuple(max(0, int(f)) if f else None for f in fields[1:14]), tuple(fields[14:])))
    return rows


def read_examples(pattern: str) -> list[dict]:
    records = []
    for path in sorted(glob.glob(pattern)):
        for raw in tf.data.TFRecordDataset(path, compression_type="GZIP"):
            ex = tf.train.Example.FromString(raw.numpy())
            feat = ex.features.feature
            records.append({k: list(v.int64_list.value) or list(v.float_list.value) for k, v in feat.items()})
    return records


def read_vocab(output_dir: str, i: int) -> list[str]:
    with open(os.path.join(output_dir, "vocab", f"cat_{i}.txt"), encoding="utf-8") as f:
        return f.read().splitlines()


def decode_rows(output_dir: str, split: str) -> list[tuple]:
    """Examples of a split mapped back to (label, counts, categorical strings) via the vocab files."""
    vocabs = [[""] + read_vocab(output_dir, i) for i in range(26)]
    rows = []
    for ex in read_examples(os.path.join(output_dir, f"Split-{split}", "*.tfrecord.gz")):
        counts = tuple(round(math.expm1(x)) for x in ex["dense"])
        cats = tuple(vocabs[i][ex[f"cat_{i}"][0]] for i in range(26))
        rows.append((ex["label"][0], counts, cats))
    return rows


def dead_letters(output_dir: str) -> list[dict]:
    out = []
    for path in glob.glob(os.path.join(output_dir, "dead_letter", "*")):
        with open(path, encoding="utf-8") as f:
            out += [json.loads(line) for line in f if line.strip()]
    return out
