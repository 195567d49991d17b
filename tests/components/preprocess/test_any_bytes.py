"""No input crashes preprocess (issue 18): whatever the bytes of a TSV, CSV or gzip input, the whole pipeline
exits 0 and every line is either a row or a dead letter with its reason: kept + dead-lettered = input lines.

The input is the fixture's valid rows, randomly mutated (seeded), plus the cases real logs have shown: a bare
CR, NUL bytes, invalid UTF-8, a 10 MB line, a line of only separators, a quote that never closes, and a
truncated last line (no newline, cut mid-row). The expected line count is counted here with bytes.split.
"""

from __future__ import annotations

import gzip
import json
import os
import random

import pytest

from components.preprocess import pipeline
from tests.components.preprocess.helpers import dead_letters, fixture_lines

VALID = [line for line in fixture_lines() if line.count(b"\t") == 39 and line[:1] in (b"0", b"1")]
PIECES = [b"\t", b",", b"\r", b"\x00", b'"', b"\xff", b"\xc3", b" ", b"\xc2\xa0", b"-", b"-1", b"1.0", b"1e3",
          "\u0665".encode(), b"9" * 30, b"", "é".encode()]


def mutated(rng: random.Random, count: int) -> list[bytes]:
    lines = []
    for _ in range(count):
        line = bytearray(rng.choice(VALID))
        for _ in range(rng.randint(0, 4)):
            pos = rng.randint(0, len(line))
            kind = rng.choice(["insert", "delete", "field", "bytes"])
            if kind == "insert":
                line[pos:pos] = rng.choice(PIECES)
            elif kind == "delete":
                del line[pos:pos + rng.randint(1, 20)]
            elif kind == "bytes":
                line[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 6))).replace(b"\n", b"")
            else:
                fields = bytes(line).split(b"\t")
                fields[rng.randrange(len(fields))] = rng.choice(PIECES)
                line = bytearray(b"\t".join(fields))
        lines.append(bytes(line))
    return lines


def special_lines(sep: bytes) -> list[bytes]:
    good = VALID[0].replace(b"\t", sep)
    fields = good.split(sep)
    with_field = lambda i, value: sep.join(fields[:i] + [value] + fields[i + 1:])  # noqa: E731
    return [
        with_field(20, b"a\rb"),                      # a bare CR inside a field
        with_field(21, b"x\x00y"),                    # NUL
        with_field(22, b"\xff\xfe"),                  # invalid UTF-8
        with_field(23, b"z" * 10_000_000),            # a 10 MB line
        sep * 39,                                     # only separators
        sep * 80,
        with_field(24, b'"never closed'),             # a quote that never closes
        with_field(2, b"-2"),                         # a negative count (clamped)
        b"",
    ]


def input_lines(data: bytes) -> int:
    """Lines as a reader of newline-separated text counts them: a last line without "\\n" counts too."""
    return data.count(b"\n") + (not data.endswith(b"\n") and len(data) > 0)


@pytest.mark.parametrize("fmt, compressed", [("tsv", False), ("csv", False), ("tsv", True)])
def test_every_line_is_a_row_or_a_dead_letter(tmp_path, fmt, compressed):
    sep = b"\t" if fmt == "tsv" else b","
    rng = random.Random(f"{fmt}{compressed}")
    body = [line.replace(b"\t", sep) for line in mutated(rng, 300)] + special_lines(sep)
    rng.shuffle(body)
    truncated = VALID[1].replace(b"\t", sep)[:57]      # the last line, cut mid-row, no newline
    data = b"\n".join(body) + b"\n" + truncated
    if fmt == "csv":
        names = ["Label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]  # as Kaggle spells it
        data = ",".join(names).encode() + b"\n" + data
    header_lines = 1 if fmt == "csv" else 0
    name = f"in.{fmt}" + (".gz" if compressed else "")
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if compressed else data)
    out = str(tmp_path / "out")
    argv = ["--input", str(path), "--output", out, "--hash-buckets", "13", "--no-progress"]
    if fmt == "csv":
        argv += ["--format", "csv"]
    assert pipeline.main(argv) == 0
    with open(os.path.join(out, "metadata.json"), encoding="utf-8") as f:
        meta = json.load(f)
    expected = input_lines(data) - header_lines
    kept = meta["row_counts"]["train"] + meta["row_counts"]["eval"]
    dead = dead_letters(out)
    assert kept + meta["dead_letter_count"] == expected
    assert len(dead) == meta["dead_letter_count"]
    assert all(d["reason"] for d in dead)
    assert len({d["line_number"] for d in dead}) == len(dead)
    assert kept > 0 and dead
