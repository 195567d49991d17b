"""Reading text inputs in batches of lines, with exact line numbers, on any Beam runner.

`PlanRanges` cuts each input file at line boundaries into ranges of about
`range_bytes` and counts the lines before each range (one scan that only
counts newlines, in C); a reshuffle of the small range descriptors spreads
them over the workers. `ReadLineBatches` then reads each range in chunks and
emits `LineBatch`es of up to `batch_lines` lines: one Beam element per few
thousand rows instead of one per row, so the per-element cost of the runner
stops mattering and the per-row work can run column-wise in compiled code.

A range is also the unit of output: every example of a range is written to
the shards named by `LineBatch.shard` (see `sink.py`), so the number of
ranges sets the number of output shards. A compressed file cannot be cut: it
is read by one worker and its batches are given a new shard every
`range_bytes` of decompressed text.

Memory is bounded by the chunk and batch sizes, never by the file size. With
a `progress_dir`, each range writes its progress (bytes and lines done) to a
small file there, which the driver's progress bar reads (see `progress.py`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import struct
import zlib
from typing import Iterator

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from components.preprocess.progress import ProgressWriter

_CHUNK = 8 << 20
DEFAULT_BATCH_LINES = 16_384
# Prefix of errors about an input file as a whole; the pipeline turns them into a usage error.
INPUT_ERROR_MARKER = "embedopt-input-error: "


class InputFileError(ValueError):
    """An input file that cannot be read to its end (truncated or corrupt)."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{INPUT_ERROR_MARKER}{path}: {problem}")


def is_compressed(path: str) -> bool:
    return CompressionTypes.detect_compression_type(path) != CompressionTypes.UNCOMPRESSED


def _is_gzip(path: str) -> bool:
    return CompressionTypes.detect_compression_type(path) == CompressionTypes.GZIP


@contextlib.contextmanager
def _open_text(path: str, compressed: bool):
    """The file's bytes: gzip through Python's gzip (which notices a truncated stream), other codecs via Beam."""
    if compressed and not _is_gzip(path):
        with FileSystems.open(path, compression_type=CompressionTypes.AUTO) as f:
            yield f
        return
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
        if not compressed:
            yield raw
            return
        with gzip.GzipFile(fileobj=raw, mode="rb") as f:  # closing a GzipFile leaves its fileobj open
            yield f


def estimated_text_bytes(path: str) -> int:
    """The file's size, or for gzip its decompressed size from the trailer (modulo 4 GiB, so a floor)."""
    size = FileSystems.match([path])[0].metadata_list[0].size_in_bytes
    if _is_gzip(path) and size >= 18:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            f.seek(size - 4)
            return max(size, struct.unpack("<I", f.read(4))[0])
    return size


@dataclasses.dataclass(frozen=True)
class FileRange:
    file_index: int
    path: str
    range_index: int
    start: int
    end: int | None  # None: read to the end (compressed files)
    first_line: int


@dataclasses.dataclass
class LineBatch:
    """Consecutive lines of one file: `lines[k]` is line `first_line + k` (or a TFDS row)."""

    source: str
    shard: str
    first_line: int
    lines: list


class PlanRangesFn(beam.DoFn):
    """(file_index, path) -> FileRanges cut at line boundaries."""

    def __init__(self, range_bytes: int):
        self._range_bytes = range_bytes

    def process(self, indexed_path):  # -> FileRanges (no hint: Beam warns on string annotations)
        file_index, path = indexed_path
        if is_compressed(path):
            yield FileRange(file_index, path, 0, 0, None, 1)
            return
        start, line, offset, carry, index = 0, 1, 0, 0, 0
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            while chunk := f.read(_CHUNK):
                pos = 0
                while offset + len(chunk) - start >= self._range_bytes:
                    cut = chunk.find(b"\n", max(pos, start + self._range_bytes - offset - 1))
                    if cut < 0:
                        break
                    end = offset + cut + 1
                    carry += chunk.count(b"\n", pos, cut + 1)
                    yield FileRange(file_index, path, index, start, end, line)
                    line += carry
                    start, pos, carry, index = end, cut + 1, 0, index + 1
                carry += chunk.count(b"\n", pos)
                offset += len(chunk)
        if offset > start:
            yield FileRange(file_index, path, index, start, offset, line)


def _chunks(f, limit: int | None) -> Iterator[bytes]:
    """Reads `limit` bytes (or to the end) in pieces of about _CHUNK, each ending at a line end."""
    left, carry = limit, b""
    while left is None or left > 0:
        data = f.read(_CHUNK if left is None else min(_CHUNK, left))
        if not data:
            break
        if left is not None:
            left -= len(data)
        data = carry + data
        cut = data.rfind(b"\n") + 1
        carry = data[cut:]
        if cut:
            yield data[:cut]
    if carry:
        yield carry + b"\n"


class ReadLineBatchesFn(beam.DoFn):
    """FileRange -> LineBatches of up to `batch_lines` lines, line endings (\\n, \\r\\n) removed.

    Extra positional side inputs are accepted and ignored: the pipeline passes
    the vocabularies here so that the runner starts the encoding pass only
    after the counting pass, with nothing but range descriptors in between.
    """

    def __init__(self, skip_header: bool, batch_lines: int, range_bytes: int, progress_dir: str | None, pass_name: str):
        self._skip_header = skip_header
        self._batch_lines = batch_lines
        self._range_bytes = range_bytes
        self._progress_dir = progress_dir
        self._pass_name = pass_name

    def process(self, file_range, *unused_side_inputs):  # FileRange -> LineBatches
        r = file_range
        progress = ProgressWriter(self._progress_dir, f"{self._pass_name}-{r.file_index:05d}-{r.range_index:05d}")
        compressed = r.end is None
        with _open_text(r.path, compressed) as f:
            if not compressed:
                f.seek(r.start)
            line, done = r.first_line, 0
            for data in self._checked_chunks(f, r, compressed):
                lines = data.split(b"\n")
                lines.pop()
                if b"\r" in data:
                    lines = [raw.rstrip(b"\r") for raw in lines]
                shard_index = r.range_index + (done // self._range_bytes if compressed else 0)
                shard = f"{r.file_index:05d}-{shard_index:05d}"
                for begin in range(0, len(lines), self._batch_lines):
                    part = lines[begin : begin + self._batch_lines]
                    first = line + begin
                    if first == 1 and self._skip_header:
                        part, first = part[1:], 2
                    if part:
                        yield LineBatch(r.path, shard, first, part)
                line += len(lines)
                done += len(data)
                progress.update(done, line - r.first_line)
        progress.update(done, line - r.first_line, final=True)

    @staticmethod
    def _checked_chunks(f, r: FileRange, compressed: bool):
        try:
            yield from _chunks(f, None if compressed else r.end - r.start)
        except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as err:
            raise InputFileError(r.path, f"cannot read it to its end, the file is truncated or corrupt ({err}); "
                                 "no output was written") from None


class PlanRanges(beam.PTransform):
    """File paths (a list known at construction) -> FileRanges, spread over the workers."""

    def __init__(self, paths: list[str], range_bytes: int = 32 << 20):
        super().__init__()
        if not paths:
            raise ValueError("PlanRanges needs at least one file path")
        self._paths = sorted(paths)
        self._range_bytes = range_bytes

    def expand(self, pbegin):
        return (
            pbegin
            | "Files" >> beam.Create(list(enumerate(self._paths)))
            | "CutRanges" >> beam.ParDo(PlanRangesFn(self._range_bytes))
            | "SpreadRanges" >> beam.Reshuffle()
        )


class ReadLineBatches(beam.PTransform):
    """FileRanges -> LineBatches; `after` (side inputs) delays the read until they are computed."""

    def __init__(self, skip_header: bool = False, *, range_bytes: int = 32 << 20,
                 batch_lines: int = DEFAULT_BATCH_LINES, progress_dir: str | None = None,
                 pass_name: str = "read", after=()):
        super().__init__()
        self._fn = ReadLineBatchesFn(skip_header, batch_lines, range_bytes, progress_dir, pass_name)
        self._after = list(after)

    def expand(self, ranges):
        return ranges | "ReadBatches" >> beam.ParDo(self._fn, *self._after)


class ReadTextLines(beam.PTransform):
    """File paths -> LineBatches: `PlanRanges` then `ReadLineBatches`."""

    def __init__(self, paths: list[str], skip_header: bool = False, range_bytes: int = 32 << 20,
                 batch_lines: int = DEFAULT_BATCH_LINES):
        super().__init__()
        self._plan = PlanRanges(paths, range_bytes)
        self._read = ReadLineBatches(skip_header, range_bytes=range_bytes, batch_lines=batch_lines)

    def expand(self, pbegin):
        return pbegin | "Plan" >> self._plan | "Read" >> self._read
