"""`InputPlan`: what a preprocess run derives from its spec and its input before the pipeline starts.

`plan_input(spec)` checks the input (files match, CSV headers agree, the
TFDS dataset is prepared) and sizes the work: how many bytes to read and how
they are cut into shards. It raises `UsageError` for anything wrong, so no
pipeline starts on input that cannot work.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from components.preprocess import metadata as md
from components.preprocess import output as out_dir
from components.preprocess.parquet_source import RowGroupRange, plan_parquet
from components.preprocess.rows import header_columns
from components.preprocess.sources import estimated_text_bytes
from components.preprocess.spec import PreprocessSpec, UsageError
from components.preprocess.tfds_source import check_tfds_dataset, tfds_num_examples

MIN_SHARD_BYTES = 1 << 20
SHARD_BYTES = 64 << 20
TFDS_ROW_BYTES = 200  # a Criteo row's size as text, to size TFDS shards like text ones


@dataclasses.dataclass(frozen=True)
class InputPlan:
    """The checked input of a run and how it is cut.

    files: the matched input files (None for TFDS); csv_columns: the CSV
    layout shared by all files (None unless format is csv); input_pattern:
    what metadata.json records as the input; total_bytes: the input's size
    as text (estimated for TFDS); num_shards: output files per split;
    range_bytes: bytes per read range (text input), tfds_rows_per_shard:
    rows per read shard (TFDS input), parquet_ranges: the row group ranges
    (Parquet input, one per shard).
    """

    files: tuple[str, ...] | None
    csv_columns: tuple[tuple[int, ...], int] | None
    input_pattern: str
    total_bytes: int
    num_shards: int
    range_bytes: int | None = None
    tfds_rows_per_shard: int | None = None
    parquet_ranges: tuple[RowGroupRange, ...] | None = None


def default_num_shards(total_bytes: int) -> int:
    """One shard per 64 MB, at least 8 so readers interleave files in parallel, but none under 1 MB."""
    return int(max(1, min(total_bytes // MIN_SHARD_BYTES, max(8, total_bytes // SHARD_BYTES))))


def synth_metadata(files) -> dict | None:
    """The `embedopt synth` .meta.json beside the first input file that has one."""
    for path in files or ():
        meta = path + md.SYNTH_META_SUFFIX
        if FileSystems.exists(meta):
            with FileSystems.open(meta, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                return json.loads(f.read())
    return None


def resolve_spec(spec: PreprocessSpec) -> PreprocessSpec:
    """The spec with its bag columns decided: given, else those of a synth .meta.json beside the input, else none."""
    if spec.multi_hot_columns is not None:
        return spec
    files = None if spec.format == "tfds" else _matched_files(spec.input)
    try:
        return spec.with_synth_bags(synth_metadata(files))
    except ValueError as err:
        raise UsageError(str(getattr(err, "flag_message", err))) from None


def plan_input(spec: PreprocessSpec) -> InputPlan:
    """Checks the input named by `spec` and sizes the run; raises UsageError naming the problem."""
    if spec.format == "tfds":
        try:
            check_tfds_dataset(spec.tfds_name, spec.tfds_data_dir, spec.tfds_split, spec.bag_layout)
        except ValueError as err:
            raise UsageError(str(err)) from None
        rows = tfds_num_examples(spec.tfds_name, spec.tfds_data_dir, spec.tfds_split)
        total_bytes = rows * TFDS_ROW_BYTES
        shards = spec.num_shards or default_num_shards(total_bytes)
        return InputPlan(files=None, csv_columns=None, input_pattern=f"tfds:{spec.tfds_name}/{spec.tfds_split}",
                         total_bytes=total_bytes, num_shards=shards, tfds_rows_per_shard=max(1, -(-rows // shards)))
    files = _matched_files(spec.input)
    if spec.format == "parquet":
        try:
            ranges, total_bytes = plan_parquet(files, spec.bag_layout, spec.num_shards, default_num_shards)
        except ValueError as err:
            raise UsageError(str(err)) from None
        return InputPlan(files=tuple(files), csv_columns=None, input_pattern=spec.input, total_bytes=total_bytes,
                         num_shards=len(ranges), parquet_ranges=tuple(ranges))
    csv_columns = _csv_columns(files) if spec.format == "csv" else None
    total_bytes = sum(estimated_text_bytes(path) for path in files)
    shards = spec.num_shards or default_num_shards(total_bytes)
    return InputPlan(files=tuple(files), csv_columns=csv_columns, input_pattern=spec.input, total_bytes=total_bytes,
                     num_shards=shards, range_bytes=max(1, -(-total_bytes // shards)))


def _matched_files(pattern: str) -> list[str]:
    try:
        matches = FileSystems.match([pattern])[0].metadata_list
    except Exception as err:  # Beam wraps the filesystem's own error types
        raise UsageError(f"cannot list input pattern {pattern!r}: {err}") from None
    files = sorted(m.path for m in matches if not m.path.endswith(md.SYNTH_META_SUFFIX))
    folders = [path for path in files if out_dir.is_local(path) and os.path.isdir(path)]
    if folders:
        raise UsageError(f"--input {pattern!r} matches the directory {folders[0]!r}; give a file pattern, "
                         f"e.g. {os.path.join(folders[0], '*.tsv')!r}")
    if not files:
        raise UsageError(f"input pattern {pattern!r} matches no files")
    return files


def _csv_columns(files: list[str]) -> tuple[tuple[int, ...], int]:
    layouts = set()
    for path in files:
        with FileSystems.open(path) as f:
            first = f.readline().decode("utf-8", errors="replace").rstrip("\r\n")
        header = next(csv.reader([first]), [])
        try:
            layouts.add((header_columns(header), len(header)))
        except ValueError as err:
            raise UsageError(f"{path}: {err}") from None
    if len(layouts) != 1:
        raise UsageError("CSV files have different headers; preprocess them separately")
    return layouts.pop()
