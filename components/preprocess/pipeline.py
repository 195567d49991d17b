"""`embedopt preprocess`: Criteo-style logs -> GZIP TFRecords in TFX layout.

Steps (named PTransforms): PlanInput (files -> line-aligned ranges) ->
ReadRows (ranges -> batches of lines) -> ParseAndValidate (columns, bad rows
to the dead letter) -> EncodeExamples (ids, tf.Examples) -> WriteExamples
(GZIP shards), with WriteDeadLetter for rejected rows. With a vocabulary,
the input is read twice: a first pass (ReadRowsForVocab -> ParseForVocab ->
Vocabularies) counts the values, and the second starts only when the
vocabularies are done, so nothing ever holds the parsed rows: memory is
O(vocabulary), not O(rows). Hash mode reads the input once.

Our flags are parsed here; every other flag is handed to Beam's
`PipelineOptions` untouched, so `--runner`, `--direct_num_workers`,
`--direct_running_mode` and Dataflow/Flink/Spark options work as usual.
DirectRunner is used when no runner is named.

Output layout under DIR:
  Split-train/data-*.tfrecord.gz, Split-eval/data-*.tfrecord.gz  (--num-shards per split)
  vocab/cat_<i>.txt          (vocabulary modes only; line k holds id k)
  dead_letter/part-*.jsonl   rejected rows with line number and reason
  metadata.json              written after the pipeline finishes (see metadata.py)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import time

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from components.lockfile import LockedError, lock_beside
from components.preprocess import metadata as md
from components.preprocess import output as out_dir
from components.preprocess.columns import ParseAndValidate
from components.preprocess.encode import EncodeExamples
from components.preprocess.progress import ProgressMonitor
from components.preprocess.rows import header_columns
from components.preprocess.sink import DEFAULT_COMPRESSION_LEVEL, WriteShards
from components.preprocess.sources import INPUT_ERROR_MARKER, PlanRanges, ReadLineBatches, estimated_text_bytes
from components.preprocess.tfds_source import ReadTfdsRows, check_tfds_dataset, tfds_num_examples
from components.preprocess.vocab import ComputeVocabularies, WriteVocabFn, vocab_path

PROG = "embedopt preprocess"
DEFAULT_MIN_FREQUENCY = 2
_COUNTS_DIR = "_counts"
_PROGRESS_DIR = "_progress"
_MIN_SHARD_BYTES = 1 << 20
_SHARD_BYTES = 64 << 20
_TFDS_ROW_BYTES = 200  # a Criteo row's size as text, to size TFDS shards like text ones


class UsageError(ValueError):
    """A problem with the arguments or inputs, found before any work starts."""


def per_feature_sizes(text: str, flag: str, minimum: int) -> list[int]:
    """"N" or 26 comma-separated values -> 26 ints, each >= minimum."""
    try:
        sizes = [int(x) for x in text.split(",")]
    except ValueError:
        raise UsageError(f"{flag} takes integers, got {text!r}") from None
    if len(sizes) == 1:
        sizes *= md.NUM_CATEGORICAL
    if len(sizes) != md.NUM_CATEGORICAL or min(sizes) < minimum:
        raise UsageError(f"{flag} takes one value or {md.NUM_CATEGORICAL} comma-separated values, each >= {minimum}; got {text!r}")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Beam pipeline: Criteo-style logs -> GZIP TFRecords of tf.Examples in TFX layout "
        "(DIR/Split-train, DIR/Split-eval, DIR/vocab, DIR/dead_letter, DIR/metadata.json).",
        epilog="Any other flag is a Beam pipeline option and passes through untouched, e.g. --runner "
        "DataflowRunner, --direct_num_workers 2 --direct_running_mode multi_processing. Default runner: DirectRunner.",
    )
    parser.add_argument("--input", required=True, help="file pattern of the logs (local, gs://, ...; .gz is read as gzip); "
                        "with --format tfds, the TFDS dataset name (or use --tfds-name)")
    parser.add_argument("--output", required=True, help="output directory; must be empty or absent unless --overwrite")
    parser.add_argument("--format", choices=("tsv", "csv", "tfds"), default="tsv",
                        help="tsv: Criteo rows (label, I1..I13, C1..C26, tab-separated, no header); csv: comma-separated "
                        "with a header naming those columns; tfds: a prepared TFDS dataset with those features")
    vocab = parser.add_mutually_exclusive_group()
    vocab.add_argument("--vocab-size", help="keep the N most frequent values per feature (ids 1..N; size N+1); "
                       "one N or 26 comma-separated values")
    vocab.add_argument("--min-frequency", type=int, help="keep values seen at least K times "
                       f"(default mode, K={DEFAULT_MIN_FREQUENCY})")
    vocab.add_argument("--hash-buckets", help="no vocabulary: id = 1 + hash(value) %% (N-1), 0 for missing; "
                       "one N or 26 comma-separated values (size N)")
    parser.add_argument("--eval-fraction", type=float, default=0.1,
                        help="fraction of rows sent to Split-eval, chosen by a hash of the raw row (default 0.1)")
    parser.add_argument("--tfds-name", help="TFDS dataset name for --format tfds (default: --input)")
    parser.add_argument("--tfds-data-dir", help="TFDS data_dir holding the prepared dataset")
    parser.add_argument("--tfds-split", default="train", help="TFDS split to read, e.g. train or train+test (default train)")
    parser.add_argument("--num-shards", type=int,
                        help="output files per split; the input is cut into this many line-aligned ranges, read in "
                        "parallel (a .gz file cannot be cut: it gets a shard per 1/N of the input's size). Default: one "
                        f"per {_SHARD_BYTES >> 20} MB of input, at least 8 (fewer for inputs under 8 MB, one per MB)")
    parser.add_argument("--compression-level", type=int, default=DEFAULT_COMPRESSION_LEVEL, choices=range(1, 10),
                        metavar="{1..9}", help="zlib level of the GZIP shards: 1 writes fastest, 9 smallest "
                        f"(default {DEFAULT_COMPRESSION_LEVEL}: 2.5x faster than zlib's usual 6 for 16%% more bytes)")
    parser.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier run in --output")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or progress log lines")
    return parser


def default_num_shards(total_bytes: int) -> int:
    """One shard per 64 MB, at least 8 so readers interleave files in parallel, but none under 1 MB."""
    return int(max(1, min(total_bytes // _MIN_SHARD_BYTES, max(8, total_bytes // _SHARD_BYTES))))


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
    import csv

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


def _write_counts(counts, output: str):
    """(name, n) elements -> one "name total" line per name in DIR/_counts/counts.txt."""
    return (
        counts
        | "SumCounts" >> beam.CombinePerKey(sum)
        | "FormatCounts" >> beam.MapTuple(lambda name, n: f"{name} {n}")
        | "WriteCounts" >> beam.io.WriteToText(os.path.join(output, _COUNTS_DIR, "counts.txt"), shard_name_template="")
    )


def _read_source(args: argparse.Namespace, pass_name: str, after=()):
    if args.format == "tfds":
        return ReadTfdsRows(args.tfds_name, args.tfds_data_dir, args.tfds_split,
                            rows_per_shard=args.tfds_rows_per_shard, after=after)
    return ReadLineBatches(args.format == "csv", range_bytes=args.range_bytes, progress_dir=args.progress_dir,
                           pass_name=pass_name, after=after)


def build_pipeline(pipeline: beam.Pipeline, args: argparse.Namespace, files: list[str] | None, csv_columns,
                   out: str) -> None:
    """Adds the preprocessing steps writing into `out` to `pipeline` (inputs already checked, see `prepare`)."""
    start = pipeline if args.format == "tfds" else pipeline | "PlanInput" >> PlanRanges(files, args.range_bytes)
    if args.hash_buckets:
        after, encode = (), EncodeExamples(hash_buckets=args.hash_bucket_sizes)
    else:
        first = start | "ReadRowsForVocab" >> _read_source(args, "count")
        counted = first | "ParseForVocab" >> ParseAndValidate(args.format, args.eval_fraction, csv_columns)
        vocab = ComputeVocabularies(top_n=args.vocab_sizes_list, min_frequency=args.min_frequency)
        vocabularies = counted["rows"] | "Vocabularies" >> vocab
        _ = vocabularies | "WriteVocab" >> beam.ParDo(WriteVocabFn(out))
        # The vocabularies gate the second read: the runner then runs it after the first pass instead of
        # holding the first pass's rows until they are done.
        after, encode = [beam.pvalue.AsDict(vocabularies)], EncodeExamples(vocabularies=vocabularies)
    batches = start | "ReadRows" >> _read_source(args, "encode", after=after)
    parsed = batches | "ParseAndValidate" >> ParseAndValidate(args.format, args.eval_fraction, csv_columns)
    examples = parsed["rows"] | "EncodeExamples" >> encode
    split_counts = examples | "WriteExamples" >> WriteShards(out, args.compression_level)
    dead = parsed["dead_letter"]
    _ = (
        dead
        | "DeadLetterJson" >> beam.Map(lambda record: json.dumps(record, sort_keys=True))
        | "WriteDeadLetter" >> beam.io.WriteToText(os.path.join(out, md.DEAD_LETTER_DIR, "part"), file_name_suffix=".jsonl")
    )
    dead_counts = dead | "CountDeadLetter" >> beam.Map(lambda _: ("dead_letter", 1))
    _write_counts((split_counts, dead_counts) | "AllCounts" >> beam.Flatten(), out)


def _read_counts(output: str) -> dict[str, int]:
    path = os.path.join(output, _COUNTS_DIR, "counts.txt")
    counts = {name: 0 for name in (*md.SPLITS, "dead_letter")}
    if FileSystems.exists(path):
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            for line in f.read().decode().splitlines():
                name, n = line.split()
                counts[name] = int(n)
    return counts


def _vocab_sizes(args: argparse.Namespace, work: str) -> dict[str, int]:
    if args.hash_buckets:
        return dict(zip(md.CATEGORICAL_KEYS, args.hash_bucket_sizes))
    sizes = {}
    for i, key in enumerate(md.CATEGORICAL_KEYS):
        path = vocab_path(work, i)
        if not FileSystems.exists(path):  # a feature that is always missing has an empty vocabulary
            FileSystems.create(path).close()
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            sizes[key] = f.read().count(b"\n") + 1
    return sizes


def _synth_metadata(files: list[str] | None):
    for path in files or ():
        meta = path + md.SYNTH_META_SUFFIX
        if FileSystems.exists(meta):
            with FileSystems.open(meta, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                return json.loads(f.read())
    return None


def prepare(argv: list[str]) -> tuple[argparse.Namespace, list[str], list[str] | None, object]:
    """Parses and checks everything that can be checked before the pipeline starts."""
    args, beam_args = build_parser().parse_known_args(argv)
    if not 0.0 <= args.eval_fraction <= 1.0:
        raise UsageError(f"--eval-fraction must be in [0, 1], got {args.eval_fraction}")
    args.hash_bucket_sizes = per_feature_sizes(args.hash_buckets, "--hash-buckets", 2) if args.hash_buckets else None
    args.vocab_sizes_list = per_feature_sizes(args.vocab_size, "--vocab-size", 1) if args.vocab_size else None
    if not args.hash_buckets and not args.vocab_size and args.min_frequency is None:
        args.min_frequency = DEFAULT_MIN_FREQUENCY
    if args.min_frequency is not None and args.min_frequency < 1:
        raise UsageError(f"--min-frequency must be >= 1, got {args.min_frequency}")
    files, csv_columns = None, None
    if args.format == "tfds":
        args.tfds_name = args.tfds_name or args.input
        try:
            check_tfds_dataset(args.tfds_name, args.tfds_data_dir, args.tfds_split)
        except ValueError as err:
            raise UsageError(str(err)) from None
        args.input_pattern = f"tfds:{args.tfds_name}/{args.tfds_split}"
    else:
        files = _matched_files(args.input)
        args.input_pattern = args.input
        if args.format == "csv":
            csv_columns = _csv_columns(files)
    if args.num_shards is not None and args.num_shards < 1:
        raise UsageError(f"--num-shards must be >= 1, got {args.num_shards}")
    if args.format == "tfds":
        rows = tfds_num_examples(args.tfds_name, args.tfds_data_dir, args.tfds_split)
        args.total_bytes = rows * _TFDS_ROW_BYTES
        shards = args.num_shards or default_num_shards(args.total_bytes)
        args.tfds_rows_per_shard = max(1, -(-rows // shards))
        args.range_bytes = None
    else:
        args.total_bytes = sum(estimated_text_bytes(path) for path in files)
        shards = args.num_shards or default_num_shards(args.total_bytes)
        args.range_bytes = max(1, -(-args.total_bytes // shards))
    args.target_shards = shards
    try:
        out_dir.check_output(args.output, args.overwrite)
    except out_dir.OutputError as err:
        raise UsageError(str(err)) from None
    return args, beam_args, files, csv_columns


def run(argv: list[str]) -> md.Metadata:
    """Runs the pipeline and writes metadata.json; raises UsageError on bad input."""
    args, beam_args, files, csv_columns = prepare(argv)
    options = PipelineOptions(beam_args)
    if options.view_as(StandardOptions).runner is None:
        options.view_as(StandardOptions).runner = "DirectRunner"
    start = time.monotonic()
    try:
        with lock_beside(args.output, f"output directory {args.output!r}"):
            # Checked again under the lock: a run that finished meanwhile has filled the directory.
            out_dir.check_output(args.output, args.overwrite)
            work = out_dir.stage(args.output, args.overwrite)
            try:
                meta = _run_into(work, args, beam_args, files, csv_columns, options)
            except BaseException:
                out_dir.discard(work, args.output)
                raise
            out_dir.commit(work, args.output)
    except (LockedError, out_dir.OutputError) as err:
        raise UsageError(str(err)) from None
    seconds = time.monotonic() - start
    total = sum(meta.row_counts.values()) + meta.dead_letter_count
    logging.info("%s: %d rows in %.1f s (%.0f rows/s)", PROG, total, seconds, total / max(seconds, 1e-9))
    return meta


def _run_into(work: str, args, beam_args, files, csv_columns, options) -> md.Metadata:
    passes = 1 if args.hash_buckets else 2
    args.progress_dir = None if args.no_progress or not out_dir.is_local(work) else os.path.join(work, _PROGRESS_DIR)
    progress = (ProgressMonitor(args.progress_dir, args.total_bytes, passes) if args.progress_dir
                else contextlib.nullcontext())
    try:
        with progress:
            with beam.Pipeline(options=options) as pipeline:
                build_pipeline(pipeline, args, files, csv_columns, work)
    except Exception as err:  # the runner wraps our DoFns' errors in its own types
        found = re.search(f"{INPUT_ERROR_MARKER}(.*)", str(err))
        if found:
            raise UsageError(found.group(1).strip()) from None
        raise
    counts = _read_counts(work)
    FileSystems.delete([os.path.join(work, name) for name in (_COUNTS_DIR, _PROGRESS_DIR)
                        if FileSystems.exists(os.path.join(work, name))])
    _check_rows(counts, args.input_pattern, work)
    options_record = {
        "vocab_mode": "hash" if args.hash_buckets else ("top_n" if args.vocab_size else "min_frequency"),
        "vocab_size": args.vocab_sizes_list, "min_frequency": args.min_frequency,
        "hash_buckets": args.hash_bucket_sizes, "eval_fraction": args.eval_fraction, "num_shards": args.target_shards,
        "compression_level": args.compression_level,
        "tfds_name": args.tfds_name, "tfds_data_dir": args.tfds_data_dir, "tfds_split": args.tfds_split,
        "beam_args": beam_args,
    }
    meta = md.Metadata(
        vocab_sizes=_vocab_sizes(args, work),
        row_counts={split: counts[split] for split in md.SPLITS},
        dead_letter_count=counts["dead_letter"],
        input_pattern=args.input_pattern,
        format=args.format,
        options=options_record,
        synth_metadata=_synth_metadata(files),
    )
    md.write_metadata(meta, work)
    return meta


def _check_rows(counts: dict[str, int], pattern: str, work: str) -> None:
    """An input with no rows, or none valid, is an error, not an empty dataset."""
    if counts["train"] + counts["eval"]:
        return
    if not counts["dead_letter"]:
        raise UsageError(f"input {pattern!r} has no rows (empty files)")
    reasons = []
    for path in FileSystems.match([os.path.join(work, md.DEAD_LETTER_DIR, "*")])[0].metadata_list:
        with FileSystems.open(path.path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            for line in f.read().decode("utf-8").splitlines()[:3]:
                record = json.loads(line)
                reasons.append(f"line {record['line_number']}: {record['reason']}")
    raise UsageError(f"no valid row in {pattern!r}: all {counts['dead_letter']} rows are malformed, e.g. "
                     + "; ".join(reasons[:3]))


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.monotonic()
    try:
        meta = run(argv)
    except UsageError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 2
    seconds = time.monotonic() - start
    total = sum(meta.row_counts.values()) + meta.dead_letter_count
    print(
        f"{PROG}: train={meta.row_counts['train']} eval={meta.row_counts['eval']} "
        f"dead_letter={meta.dead_letter_count} rows/s={total / max(seconds, 1e-9):.0f}"
    )
    return 0
