import gzip

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from components.preprocess.sources import ReadTextLines


def _expected(lines, path):
    return [(path, i, line) for i, line in enumerate(lines, start=1)]


def _numbered(batch):
    return [(batch.source, batch.first_line + k, line) for k, line in enumerate(batch.lines)]


@pytest.mark.parametrize("range_bytes", [1, 7, 50, 1 << 20])
def test_line_numbers_exact_for_any_range_size(tmp_path, range_bytes):
    lines = [f"row{i}".encode() * (i % 5) for i in range(60)]  # includes empty lines
    path = str(tmp_path / "a.txt")
    with open(path, "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    with TestPipeline() as p:
        out = p | ReadTextLines([path], range_bytes=range_bytes, batch_lines=7) | beam.FlatMap(_numbered)
        assert_that(out, equal_to(_expected(lines, path)))


@pytest.mark.parametrize("range_bytes, shards", [(1 << 20, 1), (200, 3)])
def test_one_shard_per_range(tmp_path, range_bytes, shards):
    lines = [b"x" * 99] * 6  # 600 bytes
    path = str(tmp_path / "c.txt")
    with open(path, "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    with TestPipeline() as p:
        out = p | ReadTextLines([path], range_bytes=range_bytes, batch_lines=1) | beam.Map(lambda b: b.shard)
        assert_that(out | beam.Distinct(), equal_to([f"00000-{i:05d}" for i in range(shards)]))


def test_gzip_crlf_no_trailing_newline_and_header(tmp_path):
    path = str(tmp_path / "b.csv.gz")
    with gzip.open(path, "wb") as f:
        f.write(b"h1,h2\r\nx,1\r\ny,2")
    with TestPipeline() as p:
        out = p | ReadTextLines([path], skip_header=True) | beam.FlatMap(_numbered)
        assert_that(out, equal_to([(path, 2, b"x,1"), (path, 3, b"y,2")]))
