"""`embedopt preprocess`: Criteo-style logs -> GZIP TFRecords in TFX layout.

Steps (named PTransforms): ReadRows -> ParseAndValidate -> (Vocabularies) ->
EncodeExamples -> WriteTrain / WriteEval, with WriteDeadLetter for rejected
rows. Our flags are parsed here; every other flag is handed to Beam's
`PipelineOptions` untouched, so `--runner`, `--direct_num_workers`,
`--direct_running_mode` and Dataflow/Flink/Spark options work as usual.
DirectRunner is used when no runner is named.

Output layout under DIR:
  Split-train/data-*.tfrecord.gz, Split-eval/data-*.tfrecord.gz
  vocab/cat_<i>.txt          (vocabulary modes only; line k holds id k)
  dead_letter/part-*.jsonl   rejected rows with line number and reason
  metadata.json              written after the pipeline finishes (see metadata.py)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from components.preprocess import metadata as md
from components.preprocess.encode import EncodeExamples
from components.preprocess.rows import ParseAndValidate, header_columns
from components.preprocess.sources import ReadTextLines
from components.preprocess.tfds_source import ReadTfdsRows, check_tfds_dataset
from components.preprocess.vocab import ComputeVocabularies, WriteVocabFn, vocab_path

PROG = "embedopt preprocess"
DEFAULT_MIN_FREQUENCY = 2
_COUNTS_DIR = "_counts"


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
    parser.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier run in --output")
    return parser


def _matched_files(pattern: str) -> list[str]:
    try:
        matches = FileSystems.match([pattern])[0].metadata_list
    except Exception as err:  # Beam wraps the filesystem's own error types
        raise UsageError(f"cannot list input pattern {pattern!r}: {err}") from None
    files = sorted(m.path for m in matches if not m.path.endswith(md.SYNTH_META_SUFFIX))
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


def _check_output(output: str, overwrite: bool) -> None:
    if not FileSystems.exists(output):
        return
    existing = FileSystems.match([FileSystems.join(output, "*")])[0].metadata_list
    if not existing:
        return
    if not overwrite:
        raise UsageError(f"output directory {output!r} already has data; pass --overwrite to replace it")
    ours = [md.TRAIN_DIR, md.EVAL_DIR, md.VOCAB_DIR, md.DEAD_LETTER_DIR, md.METADATA_FILE, _COUNTS_DIR]
    FileSystems.delete([FileSystems.join(output, name) for name in ours if FileSystems.exists(FileSystems.join(output, name))])


def _write_count(pcoll, output: str, name: str):
    return (
        pcoll
        | f"Count{name}" >> beam.combiners.Count.Globally()
        | f"WriteCount{name}" >> beam.io.WriteToText(os.path.join(output, _COUNTS_DIR, name), shard_name_template="")
    )


def build_pipeline(pipeline: beam.Pipeline, args: argparse.Namespace, files: list[str] | None, csv_columns=None) -> None:
    """Adds the preprocessing steps to `pipeline` (inputs already checked)."""
    out = args.output
    if args.format == "tfds":
        raw = pipeline | "ReadRows" >> ReadTfdsRows(args.tfds_name, args.tfds_data_dir, args.tfds_split)
    else:
        raw = pipeline | "ReadRows" >> ReadTextLines(files, skip_header=args.format == "csv")
    parsed = raw | "ParseAndValidate" >> ParseAndValidate(args.format, args.eval_fraction, csv_columns)
    rows = parsed["rows"]
    if args.hash_buckets:
        examples = rows | "EncodeExamples" >> EncodeExamples(hash_buckets=args.hash_bucket_sizes)
    else:
        vocab = ComputeVocabularies(top_n=args.vocab_sizes_list, min_frequency=args.min_frequency)
        vocabularies = rows | "Vocabularies" >> vocab
        _ = vocabularies | "WriteVocab" >> beam.ParDo(WriteVocabFn(out))
        examples = rows | "EncodeExamples" >> EncodeExamples(vocabularies=vocabularies)
    for split in md.SPLITS:
        _ = examples[split] | f"Write{split.title()}" >> beam.io.WriteToTFRecord(
            os.path.join(out, md.SPLIT_DIRS[split], "data"),
            file_name_suffix=".tfrecord.gz",
            compression_type=CompressionTypes.GZIP,
        )
        _write_count(examples[split], out, split)
    dead = parsed["dead_letter"]
    _ = (
        dead
        | "DeadLetterJson" >> beam.Map(lambda record: json.dumps(record, sort_keys=True))
        | "WriteDeadLetter" >> beam.io.WriteToText(os.path.join(out, md.DEAD_LETTER_DIR, "part"), file_name_suffix=".jsonl")
    )
    _write_count(dead, out, "dead_letter")


def _read_count(output: str, name: str) -> int:
    path = os.path.join(output, _COUNTS_DIR, name)
    if not FileSystems.exists(path):
        return 0
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        text = f.read().decode().strip()
    return int(text or 0)


def _vocab_sizes(args: argparse.Namespace) -> dict[str, int]:
    if args.hash_buckets:
        return dict(zip(md.CATEGORICAL_KEYS, args.hash_bucket_sizes))
    sizes = {}
    for i, key in enumerate(md.CATEGORICAL_KEYS):
        path = vocab_path(args.output, i)
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
    _check_output(args.output, args.overwrite)
    return args, beam_args, files, csv_columns


def run(argv: list[str]) -> md.Metadata:
    """Runs the pipeline and writes metadata.json; raises UsageError on bad input."""
    args, beam_args, files, csv_columns = prepare(argv)
    options = PipelineOptions(beam_args)
    if options.view_as(StandardOptions).runner is None:
        options.view_as(StandardOptions).runner = "DirectRunner"
    start = time.monotonic()
    with beam.Pipeline(options=options) as pipeline:
        build_pipeline(pipeline, args, files, csv_columns)
    counts = {name: _read_count(args.output, name) for name in (*md.SPLITS, "dead_letter")}
    FileSystems.delete([os.path.join(args.output, _COUNTS_DIR)])
    options_record = {
        "vocab_mode": "hash" if args.hash_buckets else ("top_n" if args.vocab_size else "min_frequency"),
        "vocab_size": args.vocab_sizes_list, "min_frequency": args.min_frequency,
        "hash_buckets": args.hash_bucket_sizes, "eval_fraction": args.eval_fraction,
        "tfds_name": args.tfds_name, "tfds_data_dir": args.tfds_data_dir, "tfds_split": args.tfds_split,
        "beam_args": beam_args,
    }
    meta = md.Metadata(
        vocab_sizes=_vocab_sizes(args),
        row_counts={split: counts[split] for split in md.SPLITS},
        dead_letter_count=counts["dead_letter"],
        input_pattern=args.input_pattern,
        format=args.format,
        options=options_record,
        synth_metadata=_synth_metadata(files),
    )
    md.write_metadata(meta, args.output)
    seconds = time.monotonic() - start
    total = sum(counts.values())
    logging.info("%s: %d rows in %.1f s (%.0f rows/s)", PROG, total, seconds, total / max(seconds, 1e-9))
    return meta


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
