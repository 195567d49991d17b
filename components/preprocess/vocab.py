"""Categorical vocabularies computed with Beam combiners, and hashing.

Id 0 is reserved for a missing or out-of-vocabulary value. With a vocabulary,
the kept values get ids 1..V in order of descending frequency (ties: ascending
value), so the feature's size (exclusive id bound) is V + 1. With hashing into
N buckets, a value gets `1 + fingerprint(value) % (N - 1)`, so the size is N.
"""

from __future__ import annotations

import collections
import hashlib
import os
from typing import Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from components.preprocess import metadata as md


def hash_id(value: str, buckets: int) -> int:
    """Stable bucket id in [1, buckets) for a non-empty value, 0 for ""."""
    if not value:
        return 0
    digest = hashlib.blake2b(value.encode("utf-8"), digest_size=8).digest()
    return 1 + int.from_bytes(digest, "little") % (buckets - 1)


def vocab_path(output_dir: str, index: int) -> str:
    return os.path.join(output_dir, md.VOCAB_DIR, f"{md.CATEGORICAL_KEYS[index]}.txt")


class CountValuesFn(beam.DoFn):
    """Counts (feature index, value) pairs within a bundle; one output per distinct pair.

    Emitting one element per value per row would multiply the element count by
    26; counting per bundle first keeps the shuffle to distinct values.
    """

    def start_bundle(self):
        self._counts = collections.Counter()

    def process(self, row):
        self._counts.update((i, v) for i, v in enumerate(row[2]) if v)

    def finish_bundle(self):
        for key, count in self._counts.items():
            yield WindowedValue((key, count), MIN_TIMESTAMP, [GlobalWindow()])
        self._counts = None


def _sorted_values(entry):
    index, counted = entry
    return index, [value for _, value in sorted(counted, key=lambda cv: (-cv[0], cv[1]))]


class ComputeVocabularies(beam.PTransform):
    """Parsed rows -> (feature index, [values in id order starting at id 1]).

    Exactly one of `top_n` (per-feature sizes: keep the N most frequent
    values) and `min_frequency` (keep values seen at least K times) is set.
    """

    def __init__(self, top_n: Sequence[int] | None = None, min_frequency: int | None = None):
        super().__init__()
        if (top_n is None) == (min_frequency is None):
            raise ValueError("set exactly one of top_n and min_frequency")
        self._top_n = list(top_n) if top_n is not None else None
        self._min_frequency = min_frequency

    def expand(self, rows):
        counts = (
            rows
            | "CountInBundle" >> beam.ParDo(CountValuesFn())
            | "SumCounts" >> beam.CombinePerKey(sum)
            | "ByFeature" >> beam.MapTuple(lambda key, count: (key[0], (count, key[1])))
        )
        if self._top_n is not None:
            top_n = self._top_n
            selected = counts | "TopN" >> beam.combiners.Top.PerKey(max(top_n), key=lambda cv: (cv[0], cv[1]))
            selected |= "CutPerFeature" >> beam.MapTuple(lambda i, cvs: (i, cvs[: top_n[i]]))
        else:
            k = self._min_frequency
            selected = (
                counts
                | "MinFrequency" >> beam.Filter(lambda entry: entry[1][0] >= k)
                | "GroupByFeature" >> beam.GroupByKey()
            )
        return selected | "Sort" >> beam.Map(_sorted_values)


class WriteVocabFn(beam.DoFn):
    """Writes DIR/vocab/cat_i.txt, one value per line in id order (line 1 = id 1)."""

    def __init__(self, output_dir: str):
        self._output_dir = output_dir

    def process(self, entry):
        index, values = entry
        with FileSystems.create(vocab_path(self._output_dir, index)) as f:
            f.write("".join(f"{v}\n" for v in values).encode("utf-8"))
        yield index, len(values) + 1
