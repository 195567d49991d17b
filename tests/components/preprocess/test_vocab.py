import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from components.preprocess.vocab import ComputeVocabularies, hash_id


def _rows(values_f0):
    return [(0, (), tuple([v] + [""] * 25), False) for v in values_f0]


VALUES = ["b"] * 3 + ["a"] * 3 + ["c"] * 2 + ["d"] + [""] * 4


def test_top_n_by_frequency_ties_by_value_missing_excluded():
    with TestPipeline() as p:
        out = p | beam.Create(_rows(VALUES)) | ComputeVocabularies(top_n=[3] * 26)
        assert_that(out, equal_to([(0, ["a", "b", "c"])]))


def test_min_frequency():
    with TestPipeline() as p:
        out = p | beam.Create(_rows(VALUES)) | ComputeVocabularies(min_frequency=2)
        assert_that(out, equal_to([(0, ["a", "b", "c"])]))


@pytest.mark.parametrize("buckets", [2, 10, 1000])
def test_hash_ids_in_range_and_stable(buckets):
    ids = [hash_id(f"{i:08x}", buckets) for i in range(500)]
    assert min(ids) >= 1 and max(ids) < buckets
    assert ids == [hash_id(f"{i:08x}", buckets) for i in range(500)]
    assert hash_id("", buckets) == 0
    if buckets == 1000:
        assert len(set(ids)) > 300  # spreads values
