"""A batch of raw lines -> column arrays (`ParsedBatch`) and dead-letter records.

Most lines of a real log are plain: printable ASCII, the right number of
delimiters, a 0/1 label, counts of at most 18 digits. Those take the fast
path: pyarrow's CSV reader splits the whole batch into string columns in
C++, the counts are converted and log1p'ed column-wise, and nothing is done
per field in Python. Every other line (whitespace to strip, quotes, non-ASCII
bytes, wrong field counts, bad labels or counts, TFDS rows) takes the slow
path, `rows.parse_fields`, one line at a time: the rules and the dead-letter
reasons stay exactly those of the row parser, since the fast path only
accepts lines on which both paths agree. Bag columns (see bags.py) become
list<string> arrays of their elements on both paths, capped once the batch
is assembled. Parquet batches (`parquet_rows.ArrowBatch`) are columns
already: `parquet_rows` checks them column-wise and hands back the same parts.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import itertools

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from components.preprocess import bags as bag_rules
from components.preprocess import metadata as md
from components.preprocess import parquet_rows, reasons
from components.preprocess.bags import BAG_TYPE, BagLayout
from components.preprocess.rows import (DEFAULT_NEGATIVE_COUNTS, NEGATIVE_COUNT_POLICIES, RowError,
                                        dead_letter_record, parse_fields, row_text)

# The bytes a fast-path line may hold: printable ASCII and the delimiter. Any other byte sends the line to
# the slow path (str.strip would change a field with whitespace; CSV quoting has its own rules).
_PLAIN_BYTES = {"tsv": bytes(range(0x21, 0x7F)) + b"\t", "csv": bytes(range(0x21, 0x7F)).replace(b'"', b"")}
_DELIMITER = {"tsv": b"\t", "csv": b","}
_MAX_FAST_DIGITS = 18  # fits int64
# Python's csv module refuses fields over 128 KiB by default; a long but well-formed field is a value like any
# other (the row's fate is decided by the row rules, not by the parser's buffer).
csv.field_size_limit(2**31 - 1)


@dataclasses.dataclass
class ParsedBatch:
    """Valid rows of one LineBatch as columns.

    label        int64 [n], 0 or 1
    dense        float32 [n, 13], log1p(count), 0 for a missing count
    categorical  26 pyarrow arrays of length n: string, "" for a missing value; for a bag
                 column list<string> of its elements (stripped, non-empty, capped)
    is_eval      bool [n], from a hash of the raw row
    shard        output shard of the rows (see sources.LineBatch)
    bag_stats    per bag key, its `bags.STATS` counts over these rows
    """

    shard: str
    label: np.ndarray
    dense: np.ndarray
    categorical: list
    is_eval: np.ndarray
    bag_stats: dict = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.label)


def split_buckets(keys: list[bytes]) -> np.ndarray:
    """`rows.split_bucket` of each key, as float64 [n] in [0, 1)."""
    digests = b"".join(hashlib.blake2b(key, digest_size=8).digest() for key in keys)
    return np.frombuffer(digests, dtype=">u8").astype(np.float64) / 2.0**64


class BatchParser:
    """Parses LineBatches of one input format. `csv_columns` = (positions of RAW_COLUMNS, header width)."""

    def __init__(self, fmt: str, eval_fraction: float, csv_columns: tuple[tuple[int, ...], int] | None = None,
                 negative_counts: str = DEFAULT_NEGATIVE_COUNTS, bag_layout: BagLayout | None = None):
        if fmt == "csv" and not csv_columns:
            raise ValueError("csv format needs csv_columns from the header")
        if negative_counts not in NEGATIVE_COUNT_POLICIES:
            raise ValueError(f"negative_counts must be one of {NEGATIVE_COUNT_POLICIES}, got {negative_counts!r}")
        self._fmt = fmt
        self._negative_counts = negative_counts
        self._eval_fraction = eval_fraction
        self._bags = bag_layout or BagLayout()
        self._columns, self._width = csv_columns if fmt == "csv" else (tuple(range(len(md.RAW_COLUMNS))), len(md.RAW_COLUMNS))

    def parse(self, batch) -> tuple[ParsedBatch, list[dict]]:
        if isinstance(batch, parquet_rows.ArrowBatch):
            parts, keys, dead = parquet_rows.parse_arrow_batch(batch, self._bags, self._negative_counts)
            return self._assemble(batch.shard, parts, keys), dead
        lines = batch.lines
        fast = np.zeros(len(lines), dtype=bool)  # lines the fast path reads
        if self._fmt in _PLAIN_BYTES:
            plain = _PLAIN_BYTES[self._fmt]
            fast = np.fromiter(map(bytes.count, lines, itertools.repeat(_DELIMITER[self._fmt])), np.int64,
                               count=len(lines)) == self._width - 1
            if b"".join(lines).translate(None, plain):  # some line has a byte of the slow path
                fast &= np.fromiter((not raw.translate(None, plain) for raw in lines), bool, count=len(lines))
        fast_index = np.flatnonzero(fast)
        columns, keep = self._fast_columns([lines[i] for i in fast_index]) if len(fast_index) else (None, fast[:0])
        fast[fast_index[~keep]] = False  # read but not accepted (bad label or count): the slow path decides
        slow_rows, slow_keys, dead = [], [], []
        for i in np.flatnonzero(~fast):
            raw = lines[i]
            try:
                slow_rows.append(parse_fields(self._fields(raw), self._negative_counts))
            except RowError as err:
                dead.append(dead_letter_record(batch.source, batch.first_line + int(i), raw, str(err)))
                continue
            slow_keys.append(raw if isinstance(raw, bytes) else row_text(raw).encode("utf-8"))
        fast_keys = [lines[i] for i in fast_index[keep]]
        parts = []
        if columns is not None and keep.any():
            parts.append({name: (col.filter(pa.array(keep)) if isinstance(col, pa.Array) else col[keep])
                          for name, col in columns.items()})
        if slow_rows:
            parts.append(self._row_columns(slow_rows))
        return self._assemble(batch.shard, parts, fast_keys + slow_keys), dead

    def _fields(self, raw):
        if self._fmt == "tfds":
            return raw
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise RowError(f"{reasons.INVALID_UTF8}: {err.reason} at byte {err.start}") from None
        if self._fmt == "tsv":
            return text.split("\t")
        try:
            row = next(csv.reader([text]), [])
        except csv.Error as err:  # e.g. a bare carriage return in an unquoted field
            raise RowError(f"{reasons.MALFORMED_CSV}: {err}") from None
        if len(row) != self._width:
            raise RowError(f"{reasons.WRONG_FIELD_COUNT}: {len(row)} comma-separated fields, the header has {self._width}")
        return [row[i] for i in self._columns]

    def _fast_columns(self, lines: list[bytes]):
        """Plain lines -> ({label, dense, cat_0..}, bool mask of the lines the fast path accepts)."""
        names = [f"f{i}" for i in range(self._width)]
        table = pcsv.read_csv(
            pa.py_buffer(b"\n".join(lines) + b"\n"),
            read_options=pcsv.ReadOptions(column_names=names, use_threads=False, block_size=1 << 30),
            parse_options=pcsv.ParseOptions(delimiter=_DELIMITER[self._fmt].decode(), quote_char=False,
                                            double_quote=False, escape_char=False, newlines_in_values=False,
                                            ignore_empty_lines=False),
            convert_options=pcsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                strings_can_be_null=False, quoted_strings_can_be_null=False),
        )
        if table.num_rows != len(lines):
            raise AssertionError(f"pyarrow read {table.num_rows} rows from {len(lines)} plain lines")
        cols = [table.column(names[i]).combine_chunks() for i in self._columns]
        label = cols[0]
        ok = pc.is_in(label, value_set=pa.array(["0", "1"]))
        counts = cols[1 : 1 + md.NUM_DENSE]
        count_pattern = f"^[0-9]{{0,{_MAX_FAST_DIGITS}}}$"
        if self._negative_counts == "clamp":  # a negative count is read here and becomes 0 below
            count_pattern += f"|^-[0-9]{{1,{_MAX_FAST_DIGITS}}}$"
        for col in counts:
            ok = pc.and_(ok, pc.match_substring_regex(col, count_pattern))
        ok = ok.to_numpy(zero_copy_only=False)
        safe = [pc.if_else(pa.array(ok), col, "0") for col in counts]
        dense = np.stack([_log1p_counts(col) for col in safe], axis=1)
        return {
            "label": pc.equal(label, "1").to_numpy(zero_copy_only=False).astype(np.int64),
            "dense": dense,
            **{key: bag_rules.split_column(col, self._bags.separator) if f in self._bags.indices else col
               for f, (key, col) in enumerate(zip(md.CATEGORICAL_KEYS, cols[1 + md.NUM_DENSE :]))},
        }, ok

    def _row_columns(self, rows: list[tuple]) -> dict:
        labels, dense, cats = zip(*rows)
        columns = {"label": np.array(labels, np.int64), "dense": np.array(dense, np.float64)}
        for f, key in enumerate(md.CATEGORICAL_KEYS):
            if f in self._bags.indices:
                columns[key] = pa.array([bag_rules.split_bag(row[f], self._bags.separator) for row in cats], BAG_TYPE)
            else:
                columns[key] = pa.array([row[f] for row in cats], pa.string())
        return columns

    def _assemble(self, shard: str, parts: list[dict], keys: list[bytes]) -> ParsedBatch:
        if not parts:
            return ParsedBatch(shard, np.zeros(0, np.int64), np.zeros((0, md.NUM_DENSE), np.float32),
                               [pa.array([], BAG_TYPE if f in self._bags.indices else pa.string())
                                for f in range(md.NUM_CATEGORICAL)], np.zeros(0, bool))
        categorical, stats = [], {}
        for f, key in enumerate(md.CATEGORICAL_KEYS):
            column = pa.concat_arrays([p[key] for p in parts])
            if f in self._bags.indices:
                column, stats[key] = bag_rules.truncate(column, self._bags.cap(f))
            categorical.append(column)
        return ParsedBatch(
            shard=shard,
            label=np.concatenate([p["label"] for p in parts]),
            dense=np.concatenate([p["dense"] for p in parts]).astype(np.float32),
            categorical=categorical,
            is_eval=split_buckets(keys) < self._eval_fraction,
            bag_stats=stats,
        )




def _log1p_counts(col: pa.Array) -> np.ndarray:
    """Integer strings ("" = missing = 0) -> float64 log1p, the values of math.log1p like the row parser.

    A negative count (only let in under the "clamp" policy) is 0. Counts below 2^16 (nearly all) come from a
    table of math.log1p; larger ones are computed one by one.
    """
    values = pc.cast(pc.if_else(pc.equal(col, ""), "0", col), pa.int64()).to_numpy(zero_copy_only=False)
    return parquet_rows.log1p_counts(np.maximum(values, 0))


DEAD_LETTER_TAG = "dead_letter"


class ParseBatchFn(beam.DoFn):
    """LineBatch -> ParsedBatch (main output, skipped when empty) and dead-letter records (tagged)."""

    def __init__(self, parser: BatchParser):
        self._parser = parser

    def process(self, batch):
        parsed, dead = self._parser.parse(batch)
        if len(parsed):
            yield parsed
        for record in dead:
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, record)


class ParseAndValidate(beam.PTransform):
    """LineBatches -> {"rows": ParsedBatches, "dead_letter": records with line number and reason}."""

    def __init__(self, fmt: str, eval_fraction: float, csv_columns: tuple[tuple[int, ...], int] | None = None,
                 negative_counts: str = DEFAULT_NEGATIVE_COUNTS, bag_layout: BagLayout | None = None):
        """`csv_columns` is `(positions of RAW_COLUMNS in the header, header width)`; `negative_counts` the
        policy for negative counts ("clamp" or "reject", see rows.py); `bag_layout` the bag columns."""
        super().__init__()
        self._fn = ParseBatchFn(BatchParser(fmt, eval_fraction, csv_columns, negative_counts, bag_layout))

    def expand(self, batches):
        results = batches | "Parse" >> beam.ParDo(self._fn).with_outputs(DEAD_LETTER_TAG, main="rows")
        return {"rows": results.rows, "dead_letter": results[DEAD_LETTER_TAG]}
