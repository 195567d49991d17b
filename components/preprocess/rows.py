"""Parsing and validation of raw rows, and the transform that tags bad ones.

A raw row arrives as `(source, line_number, raw)` where `raw` is the line's
bytes (TSV, CSV) or a tuple of field strings (TFDS). A good row becomes
`(label, dense, categorical, is_eval)`:
  label        int, 0 or 1
  dense        tuple of 13 floats, log1p(count), 0.0 for a missing count
  categorical  tuple of 26 strings, "" for a missing value
  is_eval      bool from a hash of the raw row (deterministic split)
A bad row becomes a dead-letter record (a dict, see `dead_letter_record`).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import math
from typing import Any, Sequence

import apache_beam as beam

from components.preprocess import metadata as md

NUM_FIELDS = 1 + md.NUM_DENSE + md.NUM_CATEGORICAL
DEAD_LETTER_TAG = "dead_letter"


class RowError(ValueError):
    """A row that cannot become an example; the message is the dead-letter reason."""


def split_bucket(raw: bytes) -> float:
    """Maps the raw row content to [0, 1), identically on every run and runner."""
    digest = hashlib.blake2b(raw, digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def parse_fields(fields: Sequence[str]) -> tuple[int, tuple[float, ...], tuple[str, ...]]:
    """Validates 40 Criteo fields (label, 13 counts, 26 categoricals)."""
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
            raise RowError(f"non-integer count in {md.RAW_DENSE[i]}: {text[:20]!r}") from None
        if count < 0:
            raise RowError(f"negative count in {md.RAW_DENSE[i]}: {count}")
        dense.append(math.log1p(count))
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
    """Positions of the Criteo columns in a CSV header; raises ValueError if some are missing."""
    names = [name.strip() for name in header]
    missing = [name for name in md.RAW_COLUMNS if name not in names]
    if missing:
        raise ValueError(f"CSV header lacks columns {missing}; expected {list(md.RAW_COLUMNS)} (any order)")
    return tuple(names.index(name) for name in md.RAW_COLUMNS)


class ParseRowFn(beam.DoFn):
    """Parses one raw row; bad rows go to the `dead_letter` tagged output."""

    def __init__(self, fmt: str, eval_fraction: float, csv_columns: tuple[tuple[int, ...], int] | None = None):
        self._fmt = fmt
        self._eval_fraction = eval_fraction
        self._csv_columns = csv_columns

    def _fields(self, raw: Any) -> list[str] | tuple[str, ...]:
        if self._fmt == "tfds":
            return raw
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise RowError(f"undecodable bytes: {err.reason} at byte {err.start}") from None
        if self._fmt == "tsv":
            return text.split("\t")
        row = next(csv.reader([text]), [])
        columns, width = self._csv_columns
        if len(row) != width:
            raise RowError(f"wrong column count: {len(row)} columns, header has {width}")
        return [row[i] for i in columns]

    def process(self, element):
        source, line_number, raw = element
        try:
            label, dense, categorical = parse_fields(self._fields(raw))
        except RowError as err:
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, dead_letter_record(source, line_number, raw, str(err)))
            return
        key = raw if isinstance(raw, bytes) else "\t".join(raw).encode("utf-8")
        yield label, dense, categorical, split_bucket(key) < self._eval_fraction


class ParseAndValidate(beam.PTransform):
    """Raw rows -> {"rows": parsed rows, "dead_letter": records with reasons}."""

    def __init__(self, fmt: str, eval_fraction: float, csv_columns: tuple[tuple[int, ...], int] | None = None):
        """`csv_columns` is `(positions of RAW_COLUMNS in the header, header width)`."""
        super().__init__()
        if fmt == "csv" and not csv_columns:
            raise ValueError("csv format needs csv_columns from the header")
        self._fn = ParseRowFn(fmt, eval_fraction, csv_columns)

    def expand(self, raw_rows):
        results = raw_rows | "Parse" >> beam.ParDo(self._fn).with_outputs(DEAD_LETTER_TAG, main="rows")
        return {"rows": results.rows, "dead_letter": results[DEAD_LETTER_TAG]}
