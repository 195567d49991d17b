"""The rules for one raw row: parsing, validation, the split hash, dead-letter records.

These pure functions define what a row means; `columns.py` applies them to
whole batches and falls back on them, line by line, for every line its fast
path does not take. A good row becomes `(label, dense, categorical)`:
  label        int, 0 or 1
  dense        tuple of 13 floats, log1p(count), 0.0 for a missing count (and, with the
               "clamp" policy for negative counts, the default, for a negative one)
  categorical  tuple of 26 strings, "" for a missing value
and its split comes from `split_bucket` of the raw row (deterministic). A bad
row becomes a dead-letter record (a dict, see `dead_letter_record`).
"""

from __future__ import annotations

import base64
import hashlib
import math
from typing import Any, Sequence

from components.preprocess import metadata as md

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


def parse_fields(fields: Sequence[str], negative_counts: str = DEFAULT_NEGATIVE_COUNTS
                 ) -> tuple[int, tuple[float, ...], tuple[str, ...]]:
    """Validates 40 Criteo fields (label, 13 counts, 26 categoricals); `negative_counts` is "clamp" or "reject"."""
    if len(fields) != NUM_FIELDS:
        raise RowError(f"wrong column count: {len(fields)} columns, expected {NUM_FIELDS}")
    label_text = fields[0].strip()
    if label_text not in ("0", "1"):
        raise RowError(f"label not 0/1: {label_text[:20]!r}")
    dense = []
    for i, text in enumerate(fields[1 : 1 + md.NUM_DENSE]):
        text = text.strip()
        if not text:
            dense.append(0.0)
            continue
        try:
            count = int(text)
        except ValueError:
            if text.isdigit():  # past Python's int() digit limit
                raise RowError(f"count too large in {md.RAW_DENSE[i]}: {len(text)} digits") from None
            raise RowError(f"non-integer count in {md.RAW_DENSE[i]}: {text[:20]!r}") from None
        if count < 0 and negative_counts == "clamp":
            count = 0
        elif count < 0:
            raise RowError(f"negative count in {md.RAW_DENSE[i]}: {count}")
        try:
            dense.append(math.log1p(count))
        except OverflowError:
            raise RowError(f"count too large in {md.RAW_DENSE[i]}: {len(text)} digits") from None
    categorical = tuple(text.strip() for text in fields[1 + md.NUM_DENSE :])
    return int(label_text), tuple(dense), categorical


def dead_letter_record(source: str, line_number: int | None, raw: Any, reason: str) -> dict[str, Any]:
    """JSON-able record: raw text when it decodes as UTF-8, else base64 (see raw_encoding)."""
    if isinstance(raw, (tuple, list)):
        raw = "\t".join(str(x) for x in raw).encode("utf-8")
    try:
        text, encoding = raw.decode("utf-8"), "text"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(raw).decode("ascii"), "base64"
    return {"line_number": line_number, "raw": text, "raw_encoding": encoding, "reason": reason, "source": source}


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
