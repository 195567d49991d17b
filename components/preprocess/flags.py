"""`embedopt preprocess`'s flags: the argparse parser and flags -> `PreprocessSpec`.

Only the CLI turns flags into a spec; every flag the parser does not know
goes to `spec.beam_args`, for Beam's `PipelineOptions`.
"""

from __future__ import annotations

import argparse

from components.cli import HelpFormatter
from components.preprocess import metadata as md
from components.preprocess.bags import DEFAULT_SEPARATORS
from components.preprocess.plan import SHARD_BYTES
from components.preprocess.rows import DEFAULT_NEGATIVE_COUNTS, NEGATIVE_COUNT_POLICIES
from components.preprocess.sink import DEFAULT_COMPRESSION_LEVEL
from components.preprocess.spec import DEFAULT_MIN_FREQUENCY, PreprocessSpec, SpecError, UsageError

PROG = "embedopt preprocess"


def _per_feature_ints(text: str | None, flag: str) -> tuple[int, ...] | None:
    """The text of a per-feature flag ("N" or "N1,...,N26") -> its integers; the spec checks how many and how large."""
    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise UsageError(f"{flag} takes integers, got {text!r}") from None


def _bag_columns(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    return () if text.strip().lower() in ("", "none") else tuple(text.split(","))


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
    parser.add_argument("--format", choices=("tsv", "csv", "tfds", "parquet"), default="tsv",
                        help="tsv: Criteo rows (label, I1..I13, C1..C26, tab-separated, no header); csv: comma-separated "
                        "with a header naming those columns; tfds: a prepared TFDS dataset with those features; parquet: "
                        "Parquet files with those columns (integer label and counts, string or binary values, "
                        "list columns for the bags)")
    vocab = parser.add_mutually_exclusive_group()
    vocab.add_argument("--vocab-size", help="keep the N most frequent values per feature (ids 1..N; size N+1); "
                       "one N or 26 comma-separated values")
    vocab.add_argument("--min-frequency", type=int, help="keep values seen at least K times; the mode used when none of the three is given "
                       f"(default: K={DEFAULT_MIN_FREQUENCY})")
    vocab.add_argument("--hash-buckets", help="no vocabulary: id = 1 + hash(value) %% (N-1), 0 for missing; "
                       "one N or 26 comma-separated values (size N). 0: id = the value's full 64-bit FarmHash "
                       "fingerprint as a signed int64 (no modulo, no collisions to speak of), 0 for missing: keys "
                       "for `embedopt train --table-kind dynamic` (metadata.json: id_kind fingerprint, vocab sizes 0)")
    parser.add_argument("--multi-hot-columns", metavar="C<i>[,C<j>...]",
                        help="categorical columns holding a bag of values (multi-hot), e.g. C3,C21: a text field "
                        "holds elements split at --multi-hot-separator, a Parquet or TFDS one a list; each element "
                        "gets an id, stored as a variable-length int64 feature. 'none' for no bags (default: the "
                        "bag columns an `embedopt synth` FILE.meta.json beside the input names, else none)")
    parser.add_argument("--multi-hot-separator", metavar="SEP",
                        help="what separates the elements of a bag field in tsv/csv (default: "
                        + ", ".join(f"{fmt} {sep!r}" for fmt, sep in DEFAULT_SEPARATORS.items() if fmt in ("tsv", "csv"))
                        + "; a csv field holding the separator ',' must be quoted). Elements are stripped and empty "
                        "ones dropped: 'a,,b' is the bag [a, b]")
    parser.add_argument("--max-bag-length", metavar="N|C<i>:N[,...]",
                        help="cap on the elements kept per bag: N for every bag column, C<i>:N per column, or both "
                        "(20,C21:100); the first N are kept, the cut ones counted in metadata.json's bag_stats "
                        "(default: no cap)")
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
            multi_hot_columns=_bag_columns(args.multi_hot_columns), multi_hot_separator=args.multi_hot_separator,
            max_bag_length=args.max_bag_length,
        )
    except SpecError as err:
        raise UsageError(err.flag_message) from None
