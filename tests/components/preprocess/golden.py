"""Canonical content of a preprocess output, for comparing runs (no imports from the code under test).

`canonical(dir)` reads the examples with TensorFlow's own `tf.train.Example`
parser, the vocabulary files and the dead letter, and returns plain JSON-able
data in a fixed order: what must stay equal when the pipeline's insides change.
`GOLDEN_CASES` are the runs captured in `tests/fixtures/preprocess_golden.json`
(made by `python -m tests.components.preprocess.golden` at the commit named
there, before the batched rewrite).
"""

from __future__ import annotations

import ast
import glob
import json
import os
import sys

import tensorflow as tf

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures")
GOLDEN_FILE = os.path.join(FIXTURES, "preprocess_golden.json")
GOLDEN_CASES = {
    f"{fixture}:{name}": (fixture, flags)
    for fixture in ("criteo_small.tsv", "criteo_tricky.tsv")
    for name, flags in (
        ("min_frequency_1", ["--min-frequency", "1"]),
        ("default", []),
        ("vocab_size_2", ["--vocab-size", "2"]),
        ("hash_7", ["--hash-buckets", "7"]),
    )
}


def _examples(pattern: str) -> list:
    rows = []
    for path in sorted(glob.glob(pattern)):
        for raw in tf.data.TFRecordDataset(path, compression_type="GZIP"):
            feature = tf.train.Example.FromString(raw.numpy()).features.feature
            rows.append([
                list(feature["label"].int64_list.value),
                [float(x) for x in feature["dense"].float_list.value],
                [list(feature[f"cat_{i}"].int64_list.value) for i in range(26)],
                sorted(feature),
            ])
    return sorted(rows, key=json.dumps)


def canonical(output_dir: str) -> dict:
    with open(os.path.join(output_dir, "metadata.json"), encoding="utf-8") as f:
        meta = json.load(f)
    vocab = {}
    for i in range(26):
        path = os.path.join(output_dir, "vocab", f"cat_{i}.txt")
        if os.path.exists(path):
            with open(path, "rb") as f:
                vocab[f"cat_{i}"] = f.read().decode("utf-8").split("\n")[:-1]
    dead = []
    for path in glob.glob(os.path.join(output_dir, "dead_letter", "*")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    record = json.loads(line)
                    record["source"] = os.path.basename(record["source"])
                    dead.append(record)
    return {
        "vocab_sizes": meta["vocab_sizes"],
        "row_counts": meta["row_counts"],
        "dead_letter_count": meta["dead_letter_count"],
        "vocab": vocab,
        "train": _examples(os.path.join(output_dir, "Split-train", "*")),
        "eval": _examples(os.path.join(output_dir, "Split-eval", "*")),
        "dead_letter": sorted(dead, key=lambda r: r["line_number"]),
    }


def run_case(main, fixture: str, flags: list[str], output_dir: str, negative_counts: str = "reject") -> dict:
    """Runs preprocess on a fixture; `negative_counts` defaults to "reject", the only behaviour when the
    captures were made."""
    code = main(["--input", os.path.join(FIXTURES, fixture), "--output", output_dir, "--eval-fraction", "0.3",
                 "--negative-counts", negative_counts, *flags])
    assert code == 0, f"preprocess exited {code} on {fixture} {flags}"
    return canonical(output_dir)


if __name__ == "__main__":
    import subprocess
    import tempfile

    from components.preprocess.pipeline import main

    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    golden = {"made_at_commit": commit, "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (fixture, flags) in GOLDEN_CASES.items():
            golden["cases"][name] = run_case(main, fixture, flags, os.path.join(tmp, name.replace(":", "_")))
    with open(GOLDEN_FILE, "w", encoding="utf-8") as f:
        json.dump(golden, f, indent=1, sort_keys=True, ensure_ascii=False)
        f.write("\n")
    print(GOLDEN_FILE, file=sys.stderr)


def renamed(record: dict) -> dict:
    """A captured dead letter with its reason in today's words (components/preprocess/reasons.py, shared with
    serving): "wrong column count: N columns" -> "wrong field count in line: N tab-separated fields",
    "undecodable bytes" -> "invalid UTF-8 in line", and values shown as text instead of a Python repr."""
    kind, _, detail = record["reason"].partition(": ")
    if kind == "wrong column count":
        kind, detail = "wrong field count in line", detail.replace(" columns,", " tab-separated fields,")
    elif kind == "undecodable bytes":
        kind = "invalid UTF-8 in line"
    elif detail.startswith("'"):
        detail = ast.literal_eval(detail)
    return {**record, "reason": f"{kind}: {detail}"}
