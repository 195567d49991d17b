"""`embedopt preprocess`: Criteo-style logs -> GZIP TFRecords in TFX layout.

Steps (named PTransforms): PlanInput (files -> line-aligned ranges) ->
ReadRows (ranges -> batches of lines) -> ParseAndValidate (columns, bad rows
to the dead letter) -> EncodeExamples (ids, tf.Examples) -> WriteExamples
(GZIP shards), with WriteDeadLetter for rejected rows. With a vocabulary,
the input is read twice: a first pass (ReadRowsForVocab -> ParseForVocab ->
Vocabularies) counts the values, and the second starts only when the
vocabularies are done, so nothing ever holds the parsed rows: memory is
O(vocabulary), not O(rows). Hash mode reads the input once.

Parquet input is planned by row groups (parquet_source.py) and read as
Arrow batches; TFDS input comes from tfds_source.py. Bag columns (bags.py)
flow through the same steps as list columns, and CountBagValues sums their
`bag_stats` for metadata.json.

`run(argv)` is the CLI: it parses our flags (flags.py) into a `PreprocessSpec`
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

from components.failure import note_path
from components.lockfile import LockedError, lock_beside
from components.preprocess import metadata as md
from components.preprocess import output as out_dir
from components.preprocess.columns import ParseAndValidate
from components.preprocess.bags import STATS
from components.preprocess.encode import EncodeExamples
from components.preprocess.flags import PROG, build_parser, spec_from_argv  # noqa: F401 (the CLI's parser lives here)
from components.preprocess.parquet_source import ReadParquetBatches
from components.preprocess.plan import InputPlan, plan_input, resolve_spec, synth_metadata
from components.preprocess.progress import ProgressMonitor
from components.preprocess.sink import WriteShards
from components.preprocess.sources import INPUT_ERROR_MARKER, PlanRanges, ReadLineBatches
from components.preprocess.spec import PreprocessSpec, UsageError
from components.preprocess.tfds_source import ReadTfdsRows
from components.preprocess.vocab import ComputeVocabularies, WriteVocabFn, vocab_path


_COUNTS_DIR = "_counts"
_PROGRESS_DIR = "_progress"
_DEAD_LETTER_COUNT = "dead_letter"


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
    if spec.format == "parquet":
        return ReadParquetBatches(plan.parquet_ranges, progress_dir=progress_dir, pass_name=pass_name, after=after)
    return ReadLineBatches(spec.format == "csv", range_bytes=plan.range_bytes, progress_dir=progress_dir,
                           pass_name=pass_name, after=after)


def build_pipeline(pipeline: beam.Pipeline, spec: PreprocessSpec, plan: InputPlan, out: str,
                   progress_dir: str | None = None) -> None:
    """Adds the preprocessing steps writing into `out` to `pipeline` (input already checked, see `plan_input`)."""
    start = (pipeline if spec.format in ("tfds", "parquet")
             else pipeline | "PlanInput" >> PlanRanges(plan.files, plan.range_bytes))
    if spec.hash_buckets:
        after, encode = (), EncodeExamples(hash_buckets=list(spec.hash_buckets))
    else:
        first = start | "ReadRowsForVocab" >> _read_source(spec, plan, progress_dir, "count")
        counted = first | "ParseForVocab" >> ParseAndValidate(spec.format, spec.eval_fraction, plan.csv_columns,
                                                               spec.negative_counts, spec.bag_layout)
        top_n = list(spec.vocab_size) if spec.vocab_size else None
        vocab = ComputeVocabularies(top_n=top_n, min_frequency=spec.min_frequency)
        vocabularies = counted["rows"] | "Vocabularies" >> vocab
        _ = vocabularies | "WriteVocab" >> beam.ParDo(WriteVocabFn(out))
        # The vocabularies gate the second read: the runner then runs it after the first pass instead of
        # holding the first pass's rows until they are done.
        after, encode = [beam.pvalue.AsDict(vocabularies)], EncodeExamples(vocabularies=vocabularies)
    batches = start | "ReadRows" >> _read_source(spec, plan, progress_dir, "encode", after=after)
    parsed = batches | "ParseAndValidate" >> ParseAndValidate(spec.format, spec.eval_fraction, plan.csv_columns,
                                                                      spec.negative_counts, spec.bag_layout)
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
    counts = [split_counts, dead_counts]
    if spec.multi_hot_columns:
        counts.append(parsed["rows"] | "CountBagValues" >> beam.FlatMap(_bag_counts))
    _write_counts(tuple(counts) | "AllCounts" >> beam.Flatten(), out)


def _bag_counts(batch):
    """ParsedBatch -> ("bag:<key>:<stat>", n) for each bag column and stat."""
    return [(f"bag:{key}:{name}", n) for key, stats in batch.bag_stats.items() for name, n in stats.items()]


def _bag_stats(counts: dict[str, int], spec: PreprocessSpec) -> dict[str, dict[str, int]] | None:
    if not spec.multi_hot_columns:
        return None
    return {key: {name: counts.get(f"bag:{key}:{name}", 0) for name in STATS} for key in spec.bag_layout.keys}


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
    spec = resolve_spec(spec)
    plan = plan_input(spec)
    try:
        out_dir.check_not_an_input(spec.output, _input_paths(spec, plan))
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
            except BaseException as err:
                out_dir.discard(work, spec.output)
                raise note_path(err, spec.output)  # Beam's wrapped errors name no path
            out_dir.commit(work, spec.output)
    except (LockedError, out_dir.OutputError) as err:
        raise UsageError(str(err)) from None
    seconds = time.monotonic() - start
    total = sum(meta.row_counts.values()) + meta.dead_letter_count
    logging.info("%s: %d rows in %.1f s (%.0f rows/s)", PROG, total, seconds, total / max(seconds, 1e-9))
    return meta


def _input_paths(spec: PreprocessSpec, plan: InputPlan) -> list[str]:
    """The local files and folders the run reads, which its output must not hold."""
    return [*(plan.files or ()), *([spec.tfds_data_dir] if spec.format == "tfds" and spec.tfds_data_dir else [])]


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
        synth_metadata=synth_metadata(plan.files),
        feature_spec=md.feature_spec(spec.bag_layout.keys),
        multi_hot_keys=spec.bag_layout.keys,
        bag_stats=_bag_stats(counts, spec),
        id_kind=spec.id_kind,
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
