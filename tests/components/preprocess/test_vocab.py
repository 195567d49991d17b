import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

import numpy as np
import pyarrow as pa
import tensorflow as tf

from components.preprocess.columns import ParsedBatch
from components.preprocess.vocab import ComputeVocabularies, VocabularyLookup, hash_id


def _as_list(index, values):
    return index, values.to_pylist()


def _rows(values_f0, batches=2):
    """The values of feature 0 in `batches` ParsedBatches (other features missing)."""
    out = []
    for part in np.array_split(np.array(values_f0, dtype=object), batches):
        n = len(part)
        cats = [pa.array(list(part), pa.string())] + [pa.array([""] * n, pa.string())] * 25
        out.append(ParsedBatch("s", np.zeros(n, np.int64), np.zeros((n, 13), np.float32), cats, np.zeros(n, bool)))
    return out


VALUES = ["b"] * 3 + ["a"] * 3 + ["c"] * 2 + ["d"] + [""] * 4


def test_top_n_by_frequency_ties_by_value_missing_excluded():
    with TestPipeline() as p:
        out = p | beam.Create(_rows(VALUES)) | ComputeVocabularies(top_n=[3] * 26) | beam.MapTuple(_as_list)
        assert_that(out, equal_to([(0, ["a", "b", "c"])]))


def test_top_n_ties_at_the_cut_keep_the_smaller_values():
    with TestPipeline() as p:
        rows = p | beam.Create(_rows(["c", "b", "a", "d", "d"], batches=3))
        out = rows | ComputeVocabularies(top_n=[2] * 26) | beam.MapTuple(_as_list)
        assert_that(out, equal_to([(0, ["d", "a"])]))


def test_counts_merge_across_many_batches(monkeypatch):
    """Counts from 50 batches sum exactly, also when the combiner compacts its accumulator."""
    from components.preprocess import vocab

    monkeypatch.setattr(vocab, "_COMPACT_MIN_ROWS", 3)
    rng = np.random.default_rng(0)
    values = [f"v{x}" for x in rng.zipf(1.5, 2000) % 97]
    counts = {v: values.count(v) for v in set(values)}
    want = sorted((v for v in counts if counts[v] >= 5), key=lambda v: (-counts[v], v))
    with TestPipeline() as p:
        rows = p | beam.Create(_rows(values, batches=50))
        out = rows | ComputeVocabularies(min_frequency=5) | beam.MapTuple(_as_list)
        assert_that(out, equal_to([(0, want)]))


def test_min_frequency():
    with TestPipeline() as p:
        out = p | beam.Create(_rows(VALUES)) | ComputeVocabularies(min_frequency=2) | beam.MapTuple(_as_list)
        assert_that(out, equal_to([(0, ["a", "b", "c"])]))


@pytest.mark.parametrize("buckets", [2, 10, 1000])
def test_hash_ids_in_range_and_stable(buckets):
    ids = [hash_id(f"{i:08x}", buckets) for i in range(500)]
    assert min(ids) >= 1 and max(ids) < buckets
    assert ids == [hash_id(f"{i:08x}", buckets) for i in range(500)]
    assert hash_id("", buckets) == 0
    assert ids[:5] == [1 + int(x) for x in tf.strings.to_hash_bucket_fast([f"{i:08x}" for i in range(5)], buckets - 1)]
    if buckets == 1000:
        assert len(set(ids)) > 300  # spreads values


@pytest.mark.parametrize("collide", [False, True])
def test_vocabulary_lookup_ids_unseen_and_missing(monkeypatch, collide):
    """Ids by position; "" and unseen values -> 0; also when fingerprints collide (the dict fallback)."""
    from components.preprocess import vocab

    if collide:
        monkeypatch.setattr(vocab, "fingerprint64", lambda v: len(v) % 3)
    values = [f"v{i}" for i in range(1000)] + ["caf\u00e9", "x" * 300]
    lookup = VocabularyLookup(pa.array(values, pa.string()))
    queries = ["v7", "", "nope", "caf\u00e9", "v999", "x" * 300, "v7", "x" * 299]
    want = [values.index(q) + 1 if q in values else 0 for q in queries]
    assert lookup.ids(pa.array(queries, pa.string())).tolist() == want
    assert VocabularyLookup(pa.array([], pa.string())).ids(pa.array(["a", ""], pa.string())).tolist() == [0, 0]
