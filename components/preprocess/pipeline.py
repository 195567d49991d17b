"""`embedopt preprocess`: Criteo-style logs -> GZIP TFRecords in TFX layout.

Steps (named PTransforms): PlanInput (files -> line-aligned ranges) ->
ReadRows (ranges -> batches of lines) -> ParseAndValidate (columns, bad rows
to the dead letter) -> EncodeExamples (ids, tf.Examples) -> WriteExamples
(GZIP shards), with WriteDeadLetter for rejected rows. With a vocabulary,
the input is read twice: a first pass (ReadRowsForVocab -> ParseForVocab ->
Vocabularies) counts the values, and the second starts only when the
vocabularies are done, so nothing ever holds the parsed rows: memory is
O(vocabulary), not O(rows). Hash mode reads the input once.

`run(argv)` is the CLI: it parses our flags into a `PreprocessSpec`
(spec.py) and calls `execute(spec)`, the executor that the demo and the
benchmarks call directly. Every other flag goes into `spec.beam_args`, handed
to Beam's `PipelineOptions` untouched, so `--runner`, `--direct_num_workers`,
`--direct_running_mode` and Dataflow/Flink/Spark options work as usual.
DirectRunner is used when no runner is named. `plan.py` checks the input and
sizes the shards before anything runs.

Output layout under DIR (`metadata.ExamplesLayout`):
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
from components.preprocess.plan import SHARD_BYTES, InputPlan, plan_input
from components.preprocess.progress import ProgressMonitor
from components.preprocess.rows import DEFAULT_NEGATIVE_COUNTS, NEGATIVE_COUNT_POLICIES
from components.preprocess.sink import DEFAULT_COMPRESSION_LEVEL, WriteShards
from components.preprocess.sources import INPUT_ERROR_MARKER, PlanRanges, ReadLineBatches
from components.preprocess.spec import DEFAULT_MIN_FREQUENCY, PreprocessSpec, SpecError, UsageError
from components.preprocess.tfds_source import ReadTfdsRows
from components.preprocess.vocab import ComputeVocabularies, WriteVocabFn, vocab_path

from components.cli import HelpFormatter

PROG = "embedopt preprocess"
_COUNTS_DIR = "_counts"
_PROGRESS_DIR = "_progress"
_DEAD_LETTER_COUNT = "dead_letter"


def _per_feature_ints(text: str | None, flag: str) -> tuple[int, ...] | None:
    """The text of a per-feature flag ("N" or "N1,...,N26") -> its integers; the spec checks how many and how large."""
    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise UsageError(f"{flag} takes integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    example = md.ExamplesLayout("DIR")
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter,
        prog=PROG,
        description="Beam pipeline: Criteo-style logs -> GZIP TFRecords of tf.Examples in TFX layout "
        f"({example.split_dir('train')}, {example.split_dir('eval')}, {example.vocab_dir}, {example.dead_letter_dir}, "
        f"{example.metadata_path}).",
        epilog="Any other flag is a Beam pipeline option and passes through untouched, e.g. --runner "
        "DataflowRunner, --direct_num_workers 2 --direct_running_mode multi_processing. Default runner: Beam's FnApiRunner (what the DirectRunner runs a batch pipeline on, without its first try, the Prism runner, which it downloads).",
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
    vocab.add_argument("--min-frequency", type=int, help="keep values seen at least K times; the mode used when none of the three is given "
                       f"(default: K={DEFAULT_MIN_FREQUENCY})")
    vocab.add_argument("--hash-buckets", help="no vocabulary: id = 1 + hash(value) %% (N-1), 0 for missing; "
                       "one N or 26 comma-separated values (size N)")
    parser.add_argument("--eval-fraction", type=float, default=0.1,
                        help=f"fraction of rows sent to {md.EVAL_DIR}, chosen by a hash of the raw row")
    parser.add_argument("--negative-counts", choices=NEGATIVE_COUNT_POLICIES, default=DEFAULT_NEGATIVE_COUNTS,
                        help="what a negative integer count (real Criteo logs have I2 down to -3) becomes: clamp: 0, "
                        "as the DLRM reference preprocessing does; reject: its row goes to the dead letter. Stored in "
                        f"{md.METADATA_FILE}, so the exported model's serving signatures and `embedopt predict` apply "
                        "the same policy")
    parser.add_argument("--tfds-name", help="TFDS dataset name for --format tfds (default: the --input value)")
    parser.add_argument("--tfds-data-dir", help="TFDS data_dir holding the prepared dataset")
    parser.add_argument("--tfds-split", default="train", help="TFDS split to read, e.g. train or train+test")
    parser.add_argument("--num-shards", type=int,
                        help="output files per split; the input is cut into this many line-aligned ranges, read in "
                        "parallel (a .gz file cannot be cut: it gets a shard per 1/N of the input's size) (default: one "
                        f"per {SHARD_BYTES >> 20} MB of input, at least 8; fewer for inputs under 8 MB, one per MB)")
    parser.add_argument("--compression-level", type=int, default=DEFAULT_COMPRESSION_LEVEL, choices=range(1, 10),
                        metavar="{1..9}", help="zlib level of the GZIP shards: 1 writes fastest, 9 smallest "
                        f"(default: {DEFAULT_COMPRESSION_LEVEL}, 2.5x faster than zlib's usual 6 for 16%% more bytes)")
    parser.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier run in --output")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or progress log lines")
    parser.add_argument("--verbose", "-v", action="store_true", help="also print Beam's and TensorFlow's INFO logs")
    return parser


def spec_from_argv(argv: list[str]) -> PreprocessSpec:
    """Our flags -> a validated spec; every flag we do not know goes to `beam_args`. Raises UsageError."""
    args, beam_args = build_parser().parse_known_args(argv)
    try:
        return PreprocessSpec(
            input=args.input, output=args.output, format=args.format,
            vocab_size=_per_feature_ints(args.vocab_size, "--vocab-size"), min_frequency=args.min_frequency,
            hash_buckets=_per_feature_ints(args.hash_buckets, "--hash-buckets"), eval_fraction=args.eval_fraction,
            negative_counts=args.negative_counts,
            tfds_name=args.tfds_name, tfds_data_dir=args.tfds_data_dir, tfds_split=args.tfds_split,
            num_shards=args.num_shards, compression_level=args.compression_level, overwrite=args.overwrite,
            progress=not args.no_progress, beam_args=tuple(beam_args),
        )
    except SpecError as err:
        raise UsageError(err.flag_message) from None


def _write_counts(counts, output: str):
    """(name, n) elements -> one "name total" line per name in DIR/_counts/counts.txt."""
    return (
        counts
        | "SumCounts" >> beam.CombinePerKey(sum)
        | "FormatCounts" >> beam.MapTuple(lambda name, n: f"{name} {n}")
        | "WriteCounts" >> beam.io.WriteToText(os.path.join(output, _COUNTS_DIR, "counts.txt"), shard_name_template="")
    )


def _read_source(spec: PreprocessSpec, plan: InputPlan, progress_dir: str | None, pass_name: str, after=()):
    if spec.format == "tfds":
        return ReadTfdsRows(spec.tfds_name, spec.tfds_data_dir, spec.tfds_split,
                            rows_per_shard=plan.tfds_rows_per_shard, after=after)
    return ReadLineBatches(spec.format == "csv", range_bytes=plan.range_bytes, progress_dir=progress_dir,
                           pass_name=pass_name, after=after)


def build_pipeline(pipeline: beam.Pipeline, spec: PreprocessSpec, plan: InputPlan, out: str,
                   progress_dir: str | None = None) -> None:
    """Adds the preprocessing steps writing into `out` to `pipeline` (input already checked, see `plan_input`)."""
    start = pipeline if spec.format == "tfds" else pipeline | "PlanInput" >> PlanRanges(plan.files, plan.range_bytes)
    if spec.hash_buckets:
        after, encode = (), EncodeExamples(hash_buckets=list(spec.hash_buckets))
    else:
        first = start | "ReadRowsForVocab" >> _read_source(spec, plan, progress_dir, "count")
        counted = first | "ParseForVocab" >> ParseAndValidate(spec.format, spec.eval_fraction, plan.csv_columns,
                                                               spec.negative_counts)
        top_n = list(spec.vocab_size) if spec.vocab_size else None
        vocab = ComputeVocabularies(top_n=top_n, min_frequency=spec.min_frequency)
        vocabularies = counted["rows"] | "Vocabularies" >> vocab
        _ = vocabularies | "WriteVocab" >> beam.ParDo(WriteVocabFn(out))
        # The vocabularies gate the second read: the runner then runs it after the first pass instead of
        # holding the first pass's rows until they are done.
        after, encode = [beam.pvalue.AsDict(vocabularies)], EncodeExamples(vocabularies=vocabularies)
    batches = start | "ReadRows" >> _read_source(spec, plan, progress_dir, "encode", after=after)
    parsed = batches | "ParseAndValidate" >> ParseAndValidate(spec.format, spec.eval_fraction, plan.csv_columns,
                                                                      spec.negative_counts)
    examples = parsed["rows"] | "EncodeExamples" >> encode
    split_counts = examples | "WriteExamples" >> WriteShards(out, spec.compression_level)
    dead = parsed["dead_letter"]
    _ = (
        dead
        | "DeadLetterJson" >> beam.Map(lambda record: json.dumps(record, sort_keys=True))
        | "WriteDeadLetter" >> beam.io.WriteToText(os.path.join(md.ExamplesLayout(out).dead_letter_dir, "part"),
                                                   file_name_suffix=".jsonl")
    )
    dead_counts = dead | "CountDeadLetter" >> beam.Map(lambda _: (_DEAD_LETTER_COUNT, 1))
    _write_counts((split_counts, dead_counts) | "AllCounts" >> beam.Flatten(), out)


def _read_counts(output: str) -> dict[str, int]:
    path = os.path.join(output, _COUNTS_DIR, "counts.txt")
    counts = {name: 0 for name in (*md.SPLITS, _DEAD_LETTER_COUNT)}
    if FileSystems.exists(path):
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            for line in f.read().decode().splitlines():
                name, n = line.split()
                counts[name] = int(n)
    return counts


def _vocab_sizes(spec: PreprocessSpec, work: str) -> dict[str, int]:
    if spec.hash_buckets:
        return dict(zip(md.CATEGORICAL_KEYS, spec.hash_buckets))
    sizes = {}
    for i, key in enumerate(md.CATEGORICAL_KEYS):
        path = vocab_path(work, i)
        if not FileSystems.exists(path):  # a feature that is always missing has an empty vocabulary
            FileSystems.create(path).close()
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            sizes[key] = f.read().count(b"\n") + 1
    return sizes


def _synth_metadata(files) -> dict | None:
    for path in files or ():
        meta = path + md.SYNTH_META_SUFFIX
        if FileSystems.exists(meta):
            with FileSystems.open(meta, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                return json.loads(f.read())
    return None


def _pipeline_options(spec: PreprocessSpec) -> PipelineOptions:
    return PipelineOptions(list(spec.beam_args))


def _runner(options: PipelineOptions):
    """The runner object when no --runner is named, else None (Beam makes the named one).

    Beam 2.77's DirectRunner first tries the Prism runner, downloading its
    binary from GitHub: offline that prints a failed download and falls back,
    online it silently changes the runner. This is what it falls back to for
    a batch pipeline like ours: the FnApiRunner, given the options as the
    DirectRunner gives them (`--direct_num_workers`, `--direct_running_mode`
    apply as before).
    """
    if options.view_as(StandardOptions).runner is not None:
        return None
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(
        beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)))


def execute(spec: PreprocessSpec) -> md.Metadata:
    """The executor: writes `spec.layout` (examples, vocabularies, dead letter, metadata.json) and returns its
    metadata; raises UsageError on bad input, leaving an earlier output in place."""
    plan = plan_input(spec)
    try:
        out_dir.check_output(spec.output, spec.overwrite)
    except out_dir.OutputError as err:
        raise UsageError(str(err)) from None
    options = _pipeline_options(spec)
    start = time.monotonic()
    try:
        with lock_beside(spec.output, f"output directory {spec.output!r}"):
            # Checked again under the lock: a run that finished meanwhile has filled the directory.
            out_dir.check_output(spec.output, spec.overwrite)
            work = out_dir.stage(spec.output, spec.overwrite)
            try:
                meta = _run_into(work, spec, plan, options)
            except BaseException:
                out_dir.discard(work, spec.output)
                raise
            out_dir.commit(work, spec.output)
    except (LockedError, out_dir.OutputError) as err:
        raise UsageError(str(err)) from None
    seconds = time.monotonic() - start
    total = sum(meta.row_counts.values()) + meta.dead_letter_count
    logging.info("%s: %d rows in %.1f s (%.0f rows/s)", PROG, total, seconds, total / max(seconds, 1e-9))
    return meta


def run(argv: list[str]) -> md.Metadata:
    """The CLI's work: flags -> `PreprocessSpec` -> `execute`; raises UsageError on bad flags or input."""
    return execute(spec_from_argv(argv))


def _run_into(work: str, spec: PreprocessSpec, plan: InputPlan, options: PipelineOptions) -> md.Metadata:
    progress_dir = os.path.join(work, _PROGRESS_DIR) if spec.progress and out_dir.is_local(work) else None
    progress = (ProgressMonitor(progress_dir, plan.total_bytes, spec.passes) if progress_dir
                else contextlib.nullcontext())
    try:
        with progress:
            with beam.Pipeline(runner=_runner(options), options=options) as pipeline:
                build_pipeline(pipeline, spec, plan, work, progress_dir)
    except Exception as err:  # the runner wraps our DoFns' errors in its own types
        found = re.search(f"{INPUT_ERROR_MARKER}(.*)", str(err))
        if found:
            raise UsageError(found.group(1).strip()) from None
        raise
    counts = _read_counts(work)
    FileSystems.delete([os.path.join(work, name) for name in (_COUNTS_DIR, _PROGRESS_DIR)
                        if FileSystems.exists(os.path.join(work, name))])
    _check_rows(counts, plan.input_pattern, work)
    meta = md.Metadata(
        vocab_sizes=_vocab_sizes(spec, work),
        row_counts={split: counts[split] for split in md.SPLITS},
        dead_letter_count=counts[_DEAD_LETTER_COUNT],
        input_pattern=plan.input_pattern,
        format=spec.format,
        options=spec.options_record(plan.num_shards),
        synth_metadata=_synth_metadata(plan.files),
    )
    md.write_metadata(meta, work)
    return meta


def _check_rows(counts: dict[str, int], pattern: str, work: str) -> None:
    """An input with no rows, or none valid, is an error, not an empty dataset."""
    if counts["train"] + counts["eval"]:
        return
    if not counts[_DEAD_LETTER_COUNT]:
        raise UsageError(f"input {pattern!r} has no rows (empty files)")
    reasons = []
    for path in FileSystems.match([os.path.join(md.ExamplesLayout(work).dead_letter_dir, "*")])[0].metadata_list:
        with FileSystems.open(path.path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            for line in f.read().decode("utf-8").splitlines()[:3]:
                record = json.loads(line)
                reasons.append(f"line {record['line_number']}: {record['reason']}")
    raise UsageError(f"no valid row in {pattern!r}: all {counts[_DEAD_LETTER_COUNT]} rows are malformed, e.g. "
                     + "; ".join(reasons[:3]))


def main(argv: list[str]) -> int:
    from components.quiet import configure_logging, verbose_requested

    configure_logging(verbose_requested(argv))
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
