"""Multi-hot (bag) categorical columns: which columns are bags, how a field becomes elements, caps.

The rules, shared by preprocess (Python and Arrow below) and serving
(components/trainer/raw_features.py):
  - a bag field of a text row is split at the separator, and every element is
    stripped (str.strip()); empty elements are dropped, so "a,,b", " a , b "
    and "a,b," are the bag [a, b], and "", " " and "," are the empty bag;
  - a list-typed source (a Parquet list column, a TFDS Sequence feature)
    gives the elements directly; each is stripped, and empty and null ones
    are dropped the same way (a null list is the empty bag);
  - with a cap K (`--max-bag-length`), the first K remaining elements are
    kept and the rest dropped; preprocess counts both in metadata.json.
An element then gets its id like a one-hot value (vocabulary or hash; an
element missing from the vocabulary gets the OOV id 0 and stays in the bag).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from components.preprocess import metadata as md

# CSV's default is not "," so that a bag field needs no quotes (quoted CSV fields take the row-by-row path).
DEFAULT_SEPARATORS = {"tsv": ",", "csv": "|", "parquet": ",", "tfds": ","}
# A separator may not hold what ends a line or a TSV field.
FORBIDDEN_SEPARATOR_CHARS = "\t\n\r"
BAG_TYPE = pa.list_(pa.string())
# Stat names of metadata.json's bag_stats[key].
STATS = ("values", "empty_bags", "truncated_bags", "truncated_values")


@dataclasses.dataclass(frozen=True)
class BagLayout:
    """The bag columns of a run: categorical indices (0-based, C<i+1>), the separator and each one's cap."""

    indices: tuple[int, ...] = ()
    separator: str = ","
    caps: tuple[int | None, ...] = ()

    def __post_init__(self):
        if len(self.caps) != len(self.indices):
            object.__setattr__(self, "caps", tuple(self.caps) + (None,) * (len(self.indices) - len(self.caps)))

    def cap(self, index: int) -> int | None:
        return self.caps[self.indices.index(index)]

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(md.CATEGORICAL_KEYS[i] for i in self.indices)

    @property
    def raw_names(self) -> tuple[str, ...]:
        return tuple(md.RAW_CATEGORICAL[i] for i in self.indices)

    def options_record(self) -> dict:
        """What metadata.json's `options` records about the bags (only written when there are bags)."""
        return {"multi_hot_columns": list(self.raw_names), "multi_hot_separator": self.separator,
                "max_bag_length": {key: cap for key, cap in zip(self.keys, self.caps)}}


def column_indices(names: Sequence[str]) -> tuple[int, ...]:
    """Raw categorical names ("C3", "c21") -> sorted 0-based indices; ValueError names a bad or repeated one."""
    indices = []
    for name in names:
        found = re.fullmatch(r"[cC]([0-9]+)", name.strip())
        index = int(found.group(1)) - 1 if found else -1
        if not 0 <= index < md.NUM_CATEGORICAL:
            raise ValueError(f"{name!r} is not a categorical column; expected C1..C{md.NUM_CATEGORICAL}")
        if index in indices:
            raise ValueError(f"{name!r} is named twice")
        indices.append(index)
    return tuple(sorted(indices))


def parse_caps(text: str) -> tuple[int | None, dict[str, int]]:
    """`--max-bag-length` text -> (cap of every bag column or None, {raw name: cap}); "20", "C21:100,C3:5", or
    both ("20,C21:100"). ValueError names a bad part."""
    default, named = None, {}
    for part in text.split(","):
        name, _, value = part.rpartition(":")
        try:
            cap = int(value)
        except ValueError:
            raise ValueError(f"{part!r} is not N or C<i>:N with an integer N") from None
        if cap < 1:
            raise ValueError(f"{part!r}: a cap must be >= 1")
        if not name:
            default = cap
        else:
            named[md.RAW_CATEGORICAL[column_indices([name])[0]]] = cap
    return default, named


def split_bag(value: str | Sequence[str] | None, separator: str) -> list[str]:
    """One field (text, or the elements of a list-typed source) -> its elements, stripped, empty ones dropped."""
    if value is None:
        return []
    parts = value.split(separator) if isinstance(value, str) else value
    return [s for s in (p.strip() for p in parts if p is not None) if s]


def split_column(column: pa.Array, separator: str) -> pa.ListArray:
    """A string column of bag fields -> list<string> of the elements (see `split_bag`)."""
    return clean_lists(pc.split_pattern(column, separator))


# A plain element needs no strip: no byte that str.strip() could remove (ASCII whitespace, bytes >= 0x80).
_PLAIN = "^[\\x21-\\x7e]*$"


def clean_lists(lists: pa.Array) -> pa.ListArray:
    """list<string> (nulls allowed) -> list<string> with each element stripped and empty or null ones dropped."""
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    values = pc.fill_null(lists.flatten(), "")  # flatten() skips null lists
    if len(values) and not pc.all(pc.match_substring_regex(values, _PLAIN)).as_py():
        encoded = values.dictionary_encode()
        stripped = pa.array([v.strip() for v in encoded.dictionary.to_pylist()], pa.string())
        values = stripped.take(encoded.indices)
    keep = pc.not_equal(values, "").to_numpy(zero_copy_only=False)
    return _rebuild(lengths, values, keep)


def _rebuild(lengths: np.ndarray, values: pa.Array, keep: np.ndarray) -> pa.ListArray:
    """Rows of `lengths` elements over `values` -> the same rows holding only the `keep` elements."""
    kept = np.concatenate([[0], np.cumsum(keep, dtype=np.int64)])
    offsets = kept[np.concatenate([[0], np.cumsum(lengths)])]
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values.filter(pa.array(keep)))


def lengths_of(bags: pa.ListArray) -> np.ndarray:
    return pc.fill_null(pc.list_value_length(bags), 0).to_numpy(zero_copy_only=False).astype(np.int64)


def truncate(bags: pa.ListArray, cap: int | None) -> tuple[pa.ListArray, dict[str, int]]:
    """Keeps the first `cap` elements of each bag; returns the bags and their `STATS` counts."""
    lengths = lengths_of(bags)
    stats = {"empty_bags": int(np.sum(lengths == 0))}
    if cap is not None and len(lengths) and lengths.max() > cap:
        starts = np.repeat(np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
        keep = np.arange(int(lengths.sum())) - starts < cap
        stats.update(truncated_bags=int(np.sum(lengths > cap)), truncated_values=int(np.sum(~keep)))
        bags = _rebuild(lengths, bags.flatten(), keep)
        lengths = np.minimum(lengths, cap)
    else:
        stats.update(truncated_bags=0, truncated_values=0)
    stats["values"] = int(lengths.sum())
    return bags, stats


def ids_of_bags(bags: pa.ListArray, ids_of_values) -> pa.ListArray:
    """list<string> -> list<int64>: `ids_of_values` (string array -> int64 ndarray) applied to the elements."""
    offsets = np.concatenate([[0], np.cumsum(lengths_of(bags))]).astype(np.int32)
    values = bags.flatten()
    ids = ids_of_values(values) if len(values) else np.zeros(0, np.int64)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.asarray(ids, np.int64)))
