"""Reading Parquet files in batches with pyarrow, cut by row groups, on any Beam runner.

`plan_parquet` reads only the files' footers (in the driver): it checks each
schema (parquet_rows.schema_problem) and cuts the row groups of every file
into ranges of about equal uncompressed size, one range per output shard.
`ReadParquetBatches` then reads each range with `ParquetFile.iter_batches`
(`DEFAULT_BATCH_ROWS` rows at a time, only the Criteo columns), so memory is
bounded by a row group and a batch, never by the file. A file is cut at row
group boundaries only: a file of one row group is one shard.
"""

from __future__ import annotations

import dataclasses

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from components.preprocess import metadata as md
from components.preprocess.bags import BagLayout
from components.preprocess.parquet_rows import ArrowBatch, schema_problem
from components.preprocess.progress import ProgressWriter
from components.preprocess.rows import header_columns

DEFAULT_BATCH_ROWS = 16_384


@dataclasses.dataclass(frozen=True)
class RowGroupRange:
    """Row groups `row_groups` of file `path` (the `file_index`-th): rows `first_line`.. of it, `size` bytes
    uncompressed; `columns` are the file's names of RAW_COLUMNS, in that order."""

    file_index: int
    path: str
    range_index: int
    row_groups: tuple[int, ...]
    first_line: int
    size: int
    columns: tuple[str, ...]


def _footer(path: str) -> pq.FileMetaData:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return pq.ParquetFile(f).metadata


def check_schema(path: str, schema: pa.Schema, bags: BagLayout) -> tuple[str, ...]:
    """The file's names of RAW_COLUMNS (matched in any case); ValueError names a missing or mistyped column."""
    try:
        positions = header_columns(schema.names)
    except ValueError as err:
        raise ValueError(f"{path}: {err}".replace("CSV header", "Parquet schema")) from None
    names = tuple(schema.names[i] for i in positions)
    bag_names = set(bags.raw_names)
    for raw, name in zip(md.RAW_COLUMNS, names):
        problem = schema_problem(raw, schema.field(name).type, raw in bag_names)
        if problem:
            raise ValueError(f"{path}: {problem.replace(repr(raw), repr(name), 1)}")
    return names


def plan_parquet(files: list[str], bags: BagLayout, num_shards: int | None,
                 default_shards) -> tuple[list[RowGroupRange], int]:
    """(ranges, total uncompressed bytes); `default_shards(total_bytes)` sizes the shards when `num_shards` is
    None. Raises ValueError for a file that is not Parquet or whose schema does not fit."""
    footers = []
    for path in files:
        try:
            footer = _footer(path)
        except (OSError, pa.ArrowException) as err:
            raise ValueError(f"{path}: not a readable Parquet file ({err})") from None
        footers.append((path, footer, check_schema(path, footer.schema.to_arrow_schema(), bags)))
    total = sum(footer.row_group(g).total_byte_size for _, footer, _ in footers for g in range(footer.num_row_groups))
    target = max(1, -(-total // (num_shards or default_shards(total))))
    ranges = []
    for file_index, (path, footer, columns) in enumerate(footers):
        groups, size, first, row = [], 0, 1, 1
        for g in range(footer.num_row_groups):
            group = footer.row_group(g)
            groups.append(g)
            size += group.total_byte_size
            row += group.num_rows
            if size >= target or g == footer.num_row_groups - 1:
                ranges.append(RowGroupRange(file_index, path, len([r for r in ranges if r.path == path]),
                                            tuple(groups), first, size, columns))
                groups, size, first = [], 0, row
    return ranges, total


class ReadParquetBatchesFn(beam.DoFn):
    """RowGroupRange -> ArrowBatches of up to `batch_rows` rows; extra side inputs only delay the read."""

    def __init__(self, batch_rows: int, progress_dir: str | None, pass_name: str):
        self._batch_rows = batch_rows
        self._progress_dir = progress_dir
        self._pass_name = pass_name

    def process(self, r: RowGroupRange, *unused_side_inputs):
        progress = ProgressWriter(self._progress_dir, f"{self._pass_name}-{r.file_index:05d}-{r.range_index:05d}")
        shard = f"{r.file_index:05d}-{r.range_index:05d}"
        line, rows = r.first_line, 0
        with FileSystems.open(r.path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            reader = pq.ParquetFile(f)
            total_rows = max(1, sum(reader.metadata.row_group(g).num_rows for g in r.row_groups))
            for batch in reader.iter_batches(batch_size=self._batch_rows, row_groups=list(r.row_groups),
                                             columns=list(r.columns)):
                batch = pa.RecordBatch.from_arrays(batch.columns, names=list(md.RAW_COLUMNS))
                yield ArrowBatch(r.path, shard, line, batch)
                line += batch.num_rows
                rows += batch.num_rows
                progress.update(r.size * rows // total_rows, rows)
        progress.update(r.size, rows, final=True)


class ReadParquetBatches(beam.PTransform):
    """Planned ranges (a list) -> ArrowBatches, spread over the workers; `after` delays the read."""

    def __init__(self, ranges: list[RowGroupRange], *, batch_rows: int = DEFAULT_BATCH_ROWS,
                 progress_dir: str | None = None, pass_name: str = "read", after=()):
        super().__init__()
        self._ranges = list(ranges)
        self._fn = ReadParquetBatchesFn(batch_rows, progress_dir, pass_name)
        self._after = list(after)

    def expand(self, pbegin):
        return (pbegin
                | "Ranges" >> beam.Create(self._ranges)
                | "SpreadRanges" >> beam.Reshuffle()
                | "ReadBatches" >> beam.ParDo(self._fn, *self._after))
