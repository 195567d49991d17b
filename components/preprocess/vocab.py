"""Categorical vocabularies computed column-wise with a Beam combiner, and hashing.

Id 0 is reserved for a missing or out-of-vocabulary value. With a vocabulary,
the kept values get ids 1..V in order of descending frequency (ties:
ascending value, by UTF-8 bytes), so the feature's size (exclusive id bound)
is V + 1; `--vocab-size N` keeps the first N values of that order. With
hashing into N buckets, a value gets `1 + Fingerprint64(value) % (N - 1)`
(FarmHash's fingerprint, which is what TensorFlow's
`tf.strings.to_hash_bucket_fast` computes), so the size is N; the exported
SavedModel runs that op, so serving maps raw values to the ids the model was
trained on. Here pyfarmhash computes it, so Beam workers need no TensorFlow.
With `--hash-buckets 0` a value's id is that fingerprint itself, no modulo,
as a signed int64 (the uint64's bits), and a missing value gets
`metadata.MISSING_KEY` (0): keys for dynamic tables (`fingerprint_ids`).

Counting: each batch contributes one (values, counts) pair of arrow arrays
per feature (`pyarrow.compute.value_counts`), and `MergeCountsFn` sums them
with arrow's hash aggregation. Memory is O(distinct values), never O(rows).
"""

from __future__ import annotations

from typing import Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystems import FileSystems
from farmhash import fingerprint64

from components.preprocess import metadata as md

_COMPACT_MIN_ROWS = 1 << 16
_LIST_CHUNK = 1 << 16


def hash_ids(values: pa.Array, buckets: int) -> np.ndarray:
    """int64 ids in [1, buckets) of a string array; 0 for "" (missing). Each distinct value is hashed once."""
    encoded = values.dictionary_encode()
    dictionary = encoded.dictionary.to_pylist()
    if not dictionary:
        return np.zeros(len(values), np.int64)
    modulus = buckets - 1
    ids = np.fromiter((1 + fingerprint64(v) % modulus if v else 0 for v in dictionary), np.int64, count=len(dictionary))
    return ids[encoded.indices.to_numpy(zero_copy_only=False)]


def fingerprint_ids(values: pa.Array) -> np.ndarray:
    """int64 keys of a string array: Fingerprint64(value)'s 64 bits as a signed int64; `MISSING_KEY` for ""."""
    encoded = values.dictionary_encode()
    dictionary = encoded.dictionary.to_pylist()
    if not dictionary:
        return np.full(len(values), md.MISSING_KEY, np.int64)
    keys = np.fromiter((fingerprint64(v) if v else md.MISSING_KEY for v in dictionary), np.uint64,
                       count=len(dictionary)).view(np.int64)
    return keys[encoded.indices.to_numpy(zero_copy_only=False)]


def hash_id(value: str, buckets: int) -> int:
    """`hash_ids` of one value."""
    return int(hash_ids(pa.array([value], pa.string()), buckets)[0])


def vocab_path(output_dir: str, index: int) -> str:
    return md.vocab_file(output_dir, md.CATEGORICAL_KEYS[index])


def _compact(values: pa.Array, counts: pa.Array) -> tuple[pa.Array, pa.Array]:
    table = pa.table({"v": values, "c": counts}).group_by("v").aggregate([("c", "sum")])
    return table.column("v").combine_chunks(), table.column("c_sum").combine_chunks()


class MergeCountsFn(beam.CombineFn):
    """(values, counts) arrow pairs of one feature -> their sum per value.

    The accumulator is a list of pairs, compacted (hash-aggregated) once it
    holds half again the distinct values of the last compaction, so adding a
    batch costs O(batch) amortized and the accumulator stays within 1.5x the
    distinct values (plus one batch); `compact` merges it fully before the
    runner encodes it to move it between workers.
    """

    def create_accumulator(self):
        return [], 0, 0  # pairs, rows held, rows after the last compaction

    def add_input(self, accumulator, pair):
        return self.merge_accumulators([accumulator, ([pair], len(pair[0]), 0)])

    def merge_accumulators(self, accumulators):
        pairs = [p for acc in accumulators for p in acc[0]]
        held = sum(acc[1] for acc in accumulators)
        compacted = max(acc[2] for acc in accumulators)
        if len(pairs) > 1 and held > max(_COMPACT_MIN_ROWS, compacted + compacted // 2):
            return self.compact((pairs, held, compacted))
        return pairs, held, compacted

    def compact(self, accumulator):
        pairs = accumulator[0]
        if len(pairs) <= 1:
            return accumulator
        merged = _compact(pa.concat_arrays([p[0] for p in pairs]), pa.concat_arrays([p[1] for p in pairs]))
        return [merged], len(merged[0]), len(merged[0])

    def extract_output(self, accumulator):
        pairs = self.compact(accumulator)[0]
        if not pairs:
            return pa.array([], pa.string()), pa.array([], pa.int64())
        return pairs[0]


class CountValuesFn(beam.DoFn):
    """ParsedBatch -> (feature index, (distinct values, counts)) for each feature with a value; a bag column
    counts each element (a value twice in one bag counts twice)."""

    def process(self, batch):
        for index, column in enumerate(batch.categorical):
            if pa.types.is_list(column.type):
                column = column.flatten()
            counted = pc.value_counts(column)
            values, counts = counted.field("values"), counted.field("counts")
            present = pc.not_equal(values, "")
            values, counts = values.filter(present), pc.cast(counts.filter(present), pa.int64())
            if len(values):
                yield index, (values, counts)


def select_vocabulary(values: pa.Array, counts: pa.Array, top_n: int | None, min_frequency: int | None) -> pa.Array:
    """Values in id order (id 1 first): by descending count, ties by ascending value."""
    table = pa.table({"v": values, "c": counts})
    if min_frequency is not None:
        table = table.filter(pc.greater_equal(table.column("c"), min_frequency))
    table = table.take(pc.sort_indices(table, sort_keys=[("c", "descending"), ("v", "ascending")]))
    if top_n is not None:
        table = table.slice(0, top_n)
    return table.column("v").combine_chunks()


def _fingerprints(values: pa.Array) -> np.ndarray:
    out = np.empty(len(values), np.uint64)
    for start in range(0, len(values), _LIST_CHUNK):  # bounded number of Python strings at a time
        chunk = values.slice(start, _LIST_CHUNK).to_pylist()
        out[start : start + len(chunk)] = np.fromiter(map(fingerprint64, chunk), np.uint64, count=len(chunk))
    return out


class VocabularyLookup:
    """Value -> id (1..V by position in `values`), 0 for "" and for values not in the vocabulary.

    Holds the vocabulary as an arrow array plus its sorted 64-bit fingerprints
    (16 bytes a value), not as Python strings in a dict (over 100): a lookup
    finds each value's fingerprint with a binary search and confirms the match
    by comparing the strings. Should two vocabulary values share a fingerprint,
    that feature falls back to a dict.
    """

    def __init__(self, values: pa.Array):
        self._values = values
        fingerprints = _fingerprints(values)
        self._order = np.argsort(fingerprints, kind="stable")
        self._sorted = fingerprints[self._order]
        self._dict = None
        if len(values) > 1 and (np.diff(self._sorted) == 0).any():
            self._dict = {v: i for i, v in enumerate(values.to_pylist(), start=1)}

    def ids(self, column: pa.Array) -> np.ndarray:
        """int64 ids of a string column."""
        encoded = column.dictionary_encode()
        distinct = encoded.dictionary
        indices = encoded.indices.to_numpy(zero_copy_only=False)
        if len(distinct) == 0 or len(self._values) == 0:
            return np.zeros(len(column), np.int64)
        if self._dict is not None:
            found = np.fromiter((self._dict.get(v, 0) for v in distinct.to_pylist()), np.int64, count=len(distinct))
            return found[indices]
        keys = _fingerprints(distinct)
        position = np.minimum(np.searchsorted(self._sorted, keys), len(self._sorted) - 1)
        candidate = self._order[position]
        same = pc.equal(self._values.take(pa.array(candidate)), distinct).to_numpy(zero_copy_only=False)
        return np.where(same, candidate + 1, 0).astype(np.int64)[indices]


class ComputeVocabularies(beam.PTransform):
    """ParsedBatches -> (feature index, [values in id order starting at id 1]).

    Exactly one of `top_n` (per-feature sizes: keep the N most frequent
    values) and `min_frequency` (keep values seen at least K times) is set.
    """

    def __init__(self, top_n: Sequence[int] | None = None, min_frequency: int | None = None):
        super().__init__()
        if (top_n is None) == (min_frequency is None):
            raise ValueError("set exactly one of top_n and min_frequency")
        self._top_n = list(top_n) if top_n is not None else None
        self._min_frequency = min_frequency

    def expand(self, batches):
        top_n, k = self._top_n, self._min_frequency
        return (
            batches
            | "CountInBatch" >> beam.ParDo(CountValuesFn())
            | "SumCounts" >> beam.CombinePerKey(MergeCountsFn())
            | "Select" >> beam.MapTuple(lambda i, vc: (i, select_vocabulary(*vc, top_n[i] if top_n else None, k)))
        )


class WriteVocabFn(beam.DoFn):
    """Writes DIR/vocab/cat_i.txt, one value per line in id order (line 1 = id 1)."""

    def __init__(self, output_dir: str):
        self._output_dir = output_dir

    def process(self, entry):
        index, values = entry
        with FileSystems.create(vocab_path(self._output_dir, index)) as f:
            for start in range(0, len(values), _LIST_CHUNK):
                f.write("".join(f"{v}\n" for v in values.slice(start, _LIST_CHUNK).to_pylist()).encode("utf-8"))
        yield index, len(values) + 1
