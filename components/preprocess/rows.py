"""The rules for one raw row: parsing, validation, the split hash, dead-letter records.

These pure functions define what a row means; `columns.py` applies them to
whole batches and falls back on them, line by line, for every line its fast
path does not take. A good row becomes `(label, dense, categorical)`:
  label        int, 0 or 1
  dense        tuple of 13 floats, log1p(count), 0.0 for a missing count (and, with the
               "clamp" policy for negative counts, the default, for a negative one)
  categorical  tuple of 26 strings, "" for a missing value (a bag column's field from a
               list-typed source, a Parquet list or a TFDS sequence, stays a tuple of
               its element strings; `bags.split_bag` makes elements of either form)
and its split comes from `split_bucket` of the raw row (deterministic). A bad
row becomes a dead-letter record (a dict, see `dead_letter_record`).
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import unicodedata
from typing import Any, Sequence

from components.preprocess import metadata as md
from components.preprocess import reasons

NUM_FIELDS = 1 + md.NUM_DENSE + md.NUM_CATEGORICAL
# What a negative count becomes: "clamp" -> 0 before log1p, as the DLRM reference preprocessing and TorchRec's
# Criteo tools do (real Criteo logs have I2 down to -3 in about one row in nine); "reject" -> a dead letter.
NEGATIVE_COUNT_POLICIES = ("clamp", "reject")
DEFAULT_NEGATIVE_COUNTS = "clamp"


class RowError(ValueError):
    """A row that cannot become an example; the message is the dead-letter reason."""


def split_bucket(raw: bytes) -> float:
    """Maps the raw row content to [0, 1), identically on every run and runner."""
    digest = hashlib.blake2b(raw, digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


# What Python's int() reads once stripped: a sign, then Unicode decimal digits with single underscores between.
_INTEGER = re.compile(r"[+-]?\d(?:_?\d)*")


def parse_count(text: str, field: str, negative_counts: str = DEFAULT_NEGATIVE_COUNTS) -> float:
    """One stripped, non-empty count text -> log1p(count) as a float64; RowError names the fault and `field`.

    Integers are what Python's int() reads; a negative one is 0 under "clamp"; a count past float64's range is
    too large. The value is math.log1p of the correctly rounded float64 of the count, as TensorFlow's
    tf.strings.to_number computes it, with no limit on the number of digits.
    """
    if not _INTEGER.fullmatch(text):
        raise RowError(f"{reasons.in_field(reasons.NON_INTEGER, field)}: {reasons.shown(text)}")
    digits = "".join(str(unicodedata.decimal(c)) for c in text if c not in "+-_")
    if text[0] == "-" and digits.strip("0"):
        if negative_counts != "clamp":
            raise RowError(f"{reasons.in_field(reasons.NEGATIVE, field)}: {reasons.shown(text)}")
        return 0.0
    value = float(digits)
    if math.isinf(value):
        raise RowError(f"{reasons.in_field(reasons.TOO_LARGE, field)}: {len(text)} digits")
    return math.log1p(value)


def parse_fields(fields: Sequence[str], negative_counts: str = DEFAULT_NEGATIVE_COUNTS, separator: str = "tab"
                 ) -> tuple[int, tuple[float, ...], tuple[str, ...]]:
    """Validates 40 Criteo fields (label, 13 counts, 26 categoricals); `negative_counts` is "clamp" or "reject".

    Faults are reported in the order of `reasons`: field count, label, then each count in turn.
    """
    if len(fields) != NUM_FIELDS:
        raise RowError(f"{reasons.WRONG_FIELD_COUNT}: {len(fields)} {separator}-separated fields, expected {NUM_FIELDS}")
    label_text = fields[0].strip()
    if label_text not in ("0", "1"):
        raise RowError(f"{reasons.BAD_LABEL}: {reasons.shown(label_text)}")
    dense = []
    for i, text in enumerate(fields[1 : 1 + md.NUM_DENSE]):
        text = text.strip()
        dense.append(parse_count(text, md.RAW_DENSE[i], negative_counts) if text else 0.0)
    categorical = tuple(text.strip() if isinstance(text, str) else tuple(text) for text in fields[1 + md.NUM_DENSE :])
    return int(label_text), tuple(dense), categorical


def dead_letter_record(source: str, line_number: int | None, raw: Any, reason: str) -> dict[str, Any]:
    """JSON-able record: raw text when it decodes as UTF-8, else base64 (see raw_encoding)."""
    if isinstance(raw, (tuple, list)):
        raw = row_text(raw).encode("utf-8")
    try:
        text, encoding = raw.decode("utf-8"), "text"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(raw).decode("ascii"), "base64"
    return {"line_number": line_number, "raw": text, "raw_encoding": encoding, "reason": reason, "source": source}


def row_text(fields: Sequence) -> str:
    """A row of field values (a list-typed bag field as its elements) as one tab-separated text, bag elements
    joined with ","."""
    return "\t".join(",".join(map(str, x)) if isinstance(x, (tuple, list)) else str(x) for x in fields)


def header_columns(header: Sequence[str]) -> tuple[int, ...]:
    """Positions of the Criteo columns in a CSV header; raises ValueError if some are missing.

    Names match case-insensitively (published copies spell the label `Label`); other columns, such as their
    `Id`, are ignored.
    """
    names = [name.strip().lower() for name in header]
    missing = [name for name in md.RAW_COLUMNS if name.lower() not in names]
    if missing:
        raise ValueError(f"CSV header lacks columns {missing}; expected {list(md.RAW_COLUMNS)} (any order, any case)")
    return tuple(names.index(name.lower()) for name in md.RAW_COLUMNS)
