"""Writing the examples as GZIP TFRecord shards, without a shuffle.

Beam's `WriteToTFRecord(num_shards=N)` groups every record by shard, which
a local runner does in memory: O(rows). Here the shard is known upstream
(one per input range, see `sources.py`), and every batch of a range is
encoded in the same bundle, so `WriteShardsFn` writes each (shard, split)
file straight from that bundle: to a temporary name first, renamed when the
bundle finishes. A retried bundle rewrites the same files from scratch, so
the output does not depend on retries.

File names: DIR/Split-<split>/data-<file>-<shard>.tfrecord.gz
"""

from __future__ import annotations

import os
import uuid

import apache_beam as beam

from components.preprocess import metadata as md

SUFFIX = ".tfrecord.gz"


def shard_path(output_dir: str, split: str, shard: str) -> str:
    return os.path.join(output_dir, md.SPLIT_DIRS[split], f"data-{shard}{SUFFIX}")


class WriteShardsFn(beam.DoFn):
    """(shard, split, serialized examples) -> files; emits (split, count) for the row counts."""

    def __init__(self, output_dir: str):
        self._output_dir = output_dir

    def start_bundle(self):
        self._writers = {}

    def process(self, element):
        shard, split, records = element
        writer = self._writers.get((shard, split))
        if writer is None:
            import tensorflow as tf

            final = shard_path(self._output_dir, split, shard)
            tf.io.gfile.makedirs(os.path.dirname(final))
            temp = f"{final}.tmp-{uuid.uuid4().hex}"
            writer = self._writers[(shard, split)] = (tf.io.TFRecordWriter(temp, options="GZIP"), temp, final)
        write = writer[0].write
        for record in records:
            write(record)
        yield split, len(records)

    def finish_bundle(self):
        import tensorflow as tf

        for writer, temp, final in self._writers.values():
            writer.close()
            tf.io.gfile.rename(temp, final, overwrite=True)
        self._writers = {}


class WriteShards(beam.PTransform):
    """(shard, split, examples) -> TFRecord files under DIR; returns (split, count) elements."""

    def __init__(self, output_dir: str):
        super().__init__()
        self._output_dir = output_dir

    def expand(self, examples):
        return examples | "WriteFiles" >> beam.ParDo(WriteShardsFn(self._output_dir))
