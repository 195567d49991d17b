"""Parquet rows: the schema rules, and a batch of rows -> the parser's column parts and dead letters.

Columns are named like the CSV header (`label`, `I1`..`I13`, `C1`..`C26`, any
case, others ignored) and typed:
  label     an integer (or boolean) column, 0 or 1
  I1..I13   integer columns; null = missing
  C<i>      string or binary; null = missing; a bag column (`--multi-hot-columns`) is a list (or large
            list) of string or binary, a null list being the empty bag and null elements dropped
A row is refused, with the reasons of reasons.py in their order, for bytes
that are not UTF-8, a label that is null or not 0/1, and a negative count
under `--negative-counts reject`. Values and elements are stripped as text
fields are. Everything runs column-wise; Python touches only the distinct
values that need stripping or decoding, and the refused rows.

The split key of a row is its TSV line: the fields in the order above,
counts in decimal, null as empty, bag elements joined with the separator, so
a Parquet row lands in the split its TSV twin would.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from components.preprocess import metadata as md
from components.preprocess import reasons
from components.preprocess.bags import BAG_TYPE, BagLayout, clean_lists
from components.preprocess.rows import dead_letter_record


@dataclasses.dataclass
class ArrowBatch:
    """Consecutive rows of one Parquet file: row k of `table` is row `first_line + k` (1-based) of `source`.

    `table` holds the RAW_COLUMNS in that order, under those names."""

    source: str
    shard: str
    first_line: int
    table: pa.RecordBatch


def _is_text(t) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or pa.types.is_large_binary(t)


def _is_list(t) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def schema_problem(name: str, dtype: pa.DataType, is_bag: bool) -> str | None:
    """Why column `name` (a RAW_COLUMNS name) of type `dtype` cannot be read, or None when it can."""
    if name == md.RAW_LABEL:
        ok, want = pa.types.is_integer(dtype) or pa.types.is_boolean(dtype), "an integer or boolean column"
    elif name in md.RAW_DENSE:
        ok, want = pa.types.is_integer(dtype), "an integer column"
    elif is_bag:
        ok, want = _is_list(dtype) and _is_text(dtype.value_type), "a list of string or binary (a bag column)"
    else:
        ok = _is_text(dtype)
        want = "a string or binary column" + (" (a list column must be named in --multi-hot-columns)"
                                              if _is_list(dtype) else "")
    return None if ok else f"column {name!r} has type {dtype}; expected {want}"


_LOG1P_TABLE_SIZE = 1 << 16
_LOG1P_TABLE = np.array([math.log1p(v) for v in range(_LOG1P_TABLE_SIZE)], dtype=np.float64)


def log1p_counts(values: np.ndarray) -> np.ndarray:
    """Non-negative integer counts -> float64 math.log1p of each (a table below 2^16, one by one above)."""
    small = values < _LOG1P_TABLE_SIZE
    out = _LOG1P_TABLE[np.where(small, values, 0)]
    large = np.flatnonzero(~small)
    if len(large):
        out[large] = [math.log1p(v) for v in values[large].tolist()]
    return out


def _as_text(column: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """string/binary values (nulls allowed) -> (string array, bool [n] of the values that are not UTF-8, as "")."""
    column = pc.fill_null(column, b"" if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)
                          else "")
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column.cast(pa.string()), np.zeros(len(column), bool)
    encoded = column.dictionary_encode()
    texts, bad = [], []
    for raw in encoded.dictionary.to_pylist():
        try:
            texts.append(raw.decode("utf-8"))
            bad.append(False)
        except UnicodeDecodeError:
            texts.append("")
            bad.append(True)
    indices = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    return pa.array(texts, pa.string()).take(encoded.indices), np.asarray(bad + [False], bool)[indices]


def _strip(column: pa.Array) -> pa.Array:
    if len(column) == 0 or pc.all(pc.match_substring_regex(column, "^[\\x21-\\x7e]*$")).as_py():
        return column
    encoded = column.dictionary_encode()
    return pa.array([v.strip() for v in encoded.dictionary.to_pylist()], pa.string()).take(encoded.indices)


def _bag_text(lists: pa.Array) -> tuple[pa.ListArray, np.ndarray, pa.Array]:
    """A list column -> (list<string> of the raw elements, bool [n]: the rows with an element that is not UTF-8)."""
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    values, bad_values = _as_text(lists.flatten())
    row_of = np.repeat(np.arange(len(lengths)), lengths)
    bad = np.zeros(len(lengths), bool)
    bad[row_of[bad_values]] = True
    return pa.ListArray.from_arrays(pa.array(offsets), values, type=BAG_TYPE), bad


def _key_text(column: pa.Array, separator: str) -> pa.Array:
    """A column as the binary text of its TSV field (see the module docstring)."""
    if _is_list(column.type):
        lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        values = pc.fill_null(column.flatten().cast(pa.binary()), b"")
        column = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), values), separator.encode("utf-8"))
    elif pa.types.is_boolean(column.type):
        column = column.cast(pa.int8())
    return pc.fill_null(column.cast(pa.string()).cast(pa.binary()) if not _is_text(column.type)
                        else column.cast(pa.binary()), b"")


def parse_arrow_batch(batch: ArrowBatch, bags: BagLayout, negative_counts: str):
    """-> ([part dict as the text parser makes it], [split key bytes of the kept rows], [dead-letter records])."""
    table = batch.table
    n = table.num_rows
    keys = pc.binary_join_element_wise(*[_key_text(table.column(name), bags.separator) for name in md.RAW_COLUMNS],
                                       b"\t")
    fault = np.full(n, "", dtype=object)

    def refuse(mask: np.ndarray, reason) -> None:
        for i in np.flatnonzero(mask & (fault == "")):
            fault[i] = reason(i) if callable(reason) else reason

    categorical, bad_text = {}, np.zeros(n, bool)
    for f, (key, name) in enumerate(zip(md.CATEGORICAL_KEYS, md.RAW_CATEGORICAL)):
        if f in bags.indices:
            elements, bad = _bag_text(table.column(name))
            categorical[key] = clean_lists(elements)
        else:
            values, bad = _as_text(table.column(name))
            categorical[key] = _strip(values)
        bad_text |= bad
        refuse(bad, f"{reasons.INVALID_UTF8}: {name} holds bytes that are not UTF-8")
    label = table.column(md.RAW_LABEL)
    label = label.cast(pa.int8()) if pa.types.is_boolean(label.type) else label
    label_values = pc.fill_null(label.cast(pa.float64()), -1.0).to_numpy(zero_copy_only=False)
    refuse(~np.isin(label_values, (0.0, 1.0)),
           lambda i: f"{reasons.BAD_LABEL}: {reasons.shown(str(table.column(md.RAW_LABEL)[i].as_py() or ''))}")
    dense = np.zeros((n, md.NUM_DENSE), np.float64)
    for j, name in enumerate(md.RAW_DENSE):
        column = table.column(name)
        present = pc.is_valid(column).to_numpy(zero_copy_only=False)
        values = pc.fill_null(column, 0).to_numpy(zero_copy_only=False)
        negative = present & (values < 0) if np.issubdtype(values.dtype, np.signedinteger) else np.zeros(n, bool)
        if negative_counts != "clamp":
            refuse(negative, lambda i: f"{reasons.in_field(reasons.NEGATIVE, name)}: {values[i]}")
        dense[:, j] = log1p_counts(np.where(negative, 0, values))
    kept = fault == ""
    dead = [dead_letter_record(batch.source, batch.first_line + int(i), keys[int(i)].as_py(), fault[i])
            for i in np.flatnonzero(~kept)]
    if not kept.any():
        return [], [], dead
    mask = pa.array(kept)
    part = {"label": label_values[kept].astype(np.int64), "dense": dense[kept],
            **{key: column.filter(mask) for key, column in categorical.items()}}
    return [part], keys.filter(mask).to_pylist(), dead
