"""Parsed rows -> serialized `tf.Example`s, tagged with their split.

Examples are built with the protobuf API directly and serialized with
`deterministic=True`, so a re-run writes the same bytes for the same row.
"""

from __future__ import annotations

from typing import Sequence

import apache_beam as beam

from components.preprocess import metadata as md
from components.preprocess.vocab import hash_id


class EncodeExampleFn(beam.DoFn):
    """Row -> serialized Example on the "train" or "eval" output.

    Ids come from `hash_buckets` when given, else from the `vocabularies` side
    input (feature index -> values in id order); an unseen value gets id 0.
    """

    def __init__(self, hash_buckets: Sequence[int] | None = None):
        self._hash_buckets = list(hash_buckets) if hash_buckets else None
        self._tables = None

    def setup(self):
        # Imported here so that only workers pay for TensorFlow's import.
        from tensorflow.core.example import example_pb2

        self._example_cls = example_pb2.Example

    def _ids(self, categorical, vocabularies):
        if self._hash_buckets is not None:
            return [hash_id(v, n) for v, n in zip(categorical, self._hash_buckets)]
        if self._tables is None:
            # The side input is the same for the whole run, so one table per DoFn instance is enough.
            self._tables = [
                {value: i for i, value in enumerate(vocabularies.get(index, ()), start=1)}
                for index in range(md.NUM_CATEGORICAL)
            ]
        return [table.get(v, 0) if v else 0 for v, table in zip(categorical, self._tables)]

    def process(self, row, vocabularies=None):
        label, dense, categorical, is_eval = row
        example = self._example_cls()
        feature = example.features.feature
        feature[md.LABEL_KEY].int64_list.value.append(label)
        feature[md.DENSE_KEY].float_list.value.extend(dense)
        for key, cat_id in zip(md.CATEGORICAL_KEYS, self._ids(categorical, vocabularies)):
            feature[key].int64_list.value.append(cat_id)
        serialized = example.SerializeToString(deterministic=True)
        yield beam.pvalue.TaggedOutput("eval" if is_eval else "train", serialized)


class EncodeExamples(beam.PTransform):
    """Parsed rows -> {"train": serialized examples, "eval": serialized examples}."""

    def __init__(self, vocabularies=None, hash_buckets: Sequence[int] | None = None):
        super().__init__()
        if (vocabularies is None) == (hash_buckets is None):
            raise ValueError("give exactly one of vocabularies (a PCollection) and hash_buckets")
        self._vocabularies = vocabularies
        self._hash_buckets = hash_buckets

    def expand(self, rows):
        fn = EncodeExampleFn(self._hash_buckets)
        if self._vocabularies is not None:
            outputs = rows | "ToExample" >> beam.ParDo(fn, beam.pvalue.AsDict(self._vocabularies)).with_outputs(
                "train", "eval"
            )
        else:
            outputs = rows | "ToExample" >> beam.ParDo(fn).with_outputs("train", "eval")
        return {"train": outputs.train, "eval": outputs.eval}
