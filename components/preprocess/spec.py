"""`PreprocessSpec`: the preprocess component's inputs, output and parameters, validated once.

The CLI (`pipeline.run(argv)`) only turns flags into a spec; the demo, the
benchmarks and tests build one directly and call `pipeline.execute(spec)`.
A bad value raises `SpecError` naming the field (`eval_fraction`); the CLI
repeats it under the flag's name (`--eval-fraction`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from components.preprocess import bags
from components.preprocess import metadata as md
from components.preprocess.rows import DEFAULT_NEGATIVE_COUNTS, NEGATIVE_COUNT_POLICIES
from components.preprocess.sink import DEFAULT_COMPRESSION_LEVEL

FORMATS = ("tsv", "csv", "tfds", "parquet")
DEFAULT_MIN_FREQUENCY = 2
COMPRESSION_LEVELS = range(1, 10)
VOCAB_MODES = ("top_n", "min_frequency", "hash", "fingerprint")


class UsageError(ValueError):
    """A problem with the arguments or inputs, found before any work starts."""


class SpecError(UsageError):
    """One bad `PreprocessSpec` field: `field` names it, `problem` says what is wrong and what would do."""

    def __init__(self, field: str, problem: str):
        self.field, self.problem = field, problem
        super().__init__(f"{field} {problem}")

    @property
    def flag_message(self) -> str:
        """The same message, naming the command-line flag of the field."""
        return f"--{self.field.replace('_', '-')} {self.problem}"


def _sizes_text(sizes) -> str:
    return repr(",".join(map(str, sizes)))


@dataclasses.dataclass(frozen=True)
class PreprocessSpec:
    """What one preprocess run reads, writes and how.

    input: file pattern of the logs; with `format="tfds"` the TFDS dataset name unless `tfds_name` is given.
    output: the directory that becomes an `ExamplesLayout`.
    vocab_size / min_frequency / hash_buckets: at most one; 1 or 26 values for the per-feature ones, kept as 26.
        With none, `min_frequency` is `DEFAULT_MIN_FREQUENCY`. `hash_buckets` 0 (for every feature) keeps each
        value's full 64-bit fingerprint as its id (`vocab_mode` "fingerprint", metadata `id_kind` "fingerprint").
    num_shards: output files per split; None sizes them from the input.
    negative_counts: "clamp" (a negative count becomes 0) or "reject" (its row goes to the dead letter); recorded
        in metadata.json, so serving and `embedopt predict` apply the same policy.
    beam_args: Beam pipeline options, passed through untouched (the local FnApiRunner when no `--runner`).
    multi_hot_columns: raw names of the bag columns ("C3", "C21"); None takes them from the `embedopt synth`
        .meta.json beside the input when there is one (`with_synth_bags`), else none; () is none.
    multi_hot_separator: what separates a text bag field's elements; None is the format's default
        (`bags.DEFAULT_SEPARATORS`: "," but "|" for csv).
    max_bag_length: the cap of every bag column (an int), per column ({"C21": 100}), or the flag's text
        ("20", "C21:100,C3:5", "20,C21:100"); None: no cap.
    """

    input: str
    output: str
    format: str = "tsv"
    vocab_size: tuple[int, ...] | None = None
    min_frequency: int | None = None
    hash_buckets: tuple[int, ...] | None = None
    eval_fraction: float = 0.1
    negative_counts: str = DEFAULT_NEGATIVE_COUNTS
    tfds_name: str | None = None
    tfds_data_dir: str | None = None
    tfds_split: str = "train"
    num_shards: int | None = None
    compression_level: int = DEFAULT_COMPRESSION_LEVEL
    overwrite: bool = False
    progress: bool = True
    beam_args: tuple[str, ...] = ()
    multi_hot_columns: tuple[str, ...] | None = None
    multi_hot_separator: str | None = None
    max_bag_length: int | str | Mapping[str, int] | None = None

    def __post_init__(self):
        for name in ("input", "output"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise SpecError(name, f"must be a non-empty path, got {getattr(self, name)!r}")
        if self.format not in FORMATS:
            raise SpecError("format", f"must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if not isinstance(self.eval_fraction, (int, float)) or not 0.0 <= self.eval_fraction <= 1.0:
            raise SpecError("eval_fraction", f"must be in [0, 1], got {self.eval_fraction}")
        if self.negative_counts not in NEGATIVE_COUNT_POLICIES:
            raise SpecError("negative_counts", f"must be one of {', '.join(NEGATIVE_COUNT_POLICIES)}, "
                            f"got {self.negative_counts!r}")
        modes = [name for name in ("vocab_size", "min_frequency", "hash_buckets") if getattr(self, name) is not None]
        if len(modes) > 1:
            raise SpecError(modes[1], f"cannot be combined with {modes[0]}; give at most one of vocab_size, "
                            "min_frequency, hash_buckets")
        self._set("hash_buckets", self._hash_buckets())
        self._set("vocab_size", self._per_feature("vocab_size", 1))
        if not modes:
            self._set("min_frequency", DEFAULT_MIN_FREQUENCY)
        if self.min_frequency is not None and (not _is_int(self.min_frequency) or self.min_frequency < 1):
            raise SpecError("min_frequency", f"must be >= 1, got {self.min_frequency}")
        if self.format == "tfds" and not self.tfds_name:
            self._set("tfds_name", self.input)
        if self.num_shards is not None and (not _is_int(self.num_shards) or self.num_shards < 1):
            raise SpecError("num_shards", f"must be >= 1, got {self.num_shards}")
        if self.compression_level not in COMPRESSION_LEVELS or not _is_int(self.compression_level):
            raise SpecError("compression_level", f"must be an integer in 1..9, got {self.compression_level!r}")
        self._set("beam_args", tuple(self.beam_args))
        if not all(isinstance(arg, str) for arg in self.beam_args):
            raise SpecError("beam_args", f"must be strings, got {self.beam_args!r}")
        self._check_bags()

    def _check_bags(self) -> None:
        if self.multi_hot_columns is not None:
            names = (self.multi_hot_columns,) if isinstance(self.multi_hot_columns, str) else self.multi_hot_columns
            try:
                indices = bags.column_indices(names)
            except ValueError as err:
                raise SpecError("multi_hot_columns", f"takes C1..C{md.NUM_CATEGORICAL} names: {err}") from None
            self._set("multi_hot_columns", tuple(md.RAW_CATEGORICAL[i] for i in indices))
        if self.multi_hot_separator is None:
            self._set("multi_hot_separator", bags.DEFAULT_SEPARATORS[self.format])
        separator = self.multi_hot_separator
        forbidden = bags.FORBIDDEN_SEPARATOR_CHARS + ('"' if self.format == "csv" else "")
        if not isinstance(separator, str) or not separator or any(c in separator for c in forbidden):
            raise SpecError("multi_hot_separator", f"must be a non-empty string without {forbidden!r}, got {separator!r}")
        default, named = self._caps()
        columns = self.multi_hot_columns or ()
        if self.multi_hot_columns is not None:
            stray = sorted(set(named) - set(columns))
            if stray or (self.max_bag_length is not None and not columns):
                raise SpecError("max_bag_length", f"names {stray or [self.max_bag_length]}, which are not bag columns "
                                f"(--multi-hot-columns: {','.join(columns) or 'none'})")

    def _caps(self) -> tuple[int | None, dict[str, int]]:
        cap = self.max_bag_length
        try:
            if cap is None:
                return None, {}
            if _is_int(cap):
                return bags.parse_caps(str(cap))
            if isinstance(cap, str):
                return bags.parse_caps(cap)
            if isinstance(cap, Mapping):
                return bags.parse_caps(",".join(f"{name}:{value}" for name, value in cap.items()))
        except ValueError as err:
            raise SpecError("max_bag_length", f"takes N or C<i>:N parts (N >= 1): {err}") from None
        raise SpecError("max_bag_length", f"must be an int, a mapping or text, got {cap!r}")

    def with_synth_bags(self, synth_metadata: dict | None) -> PreprocessSpec:
        """The spec with `multi_hot_columns` decided: those of an `embedopt synth` .meta.json (and its
        separator, unless one was given) when the spec left them open, else none."""
        if self.multi_hot_columns is not None:
            return self
        columns = tuple((synth_metadata or {}).get("multi_hot_columns") or ())
        separator = (synth_metadata or {}).get("multi_hot_separator") if columns else None
        if separator and self.multi_hot_separator == bags.DEFAULT_SEPARATORS[self.format]:
            return dataclasses.replace(self, multi_hot_columns=columns, multi_hot_separator=separator)
        return dataclasses.replace(self, multi_hot_columns=columns)

    @property
    def bag_layout(self) -> bags.BagLayout:
        """The bag columns (none while `multi_hot_columns` is undecided) with their caps."""
        default, named = self._caps()
        names = self.multi_hot_columns or ()
        return bags.BagLayout(bags.column_indices(names), self.multi_hot_separator,
                              tuple(named.get(name, default) for name in names))

    def _set(self, name: str, value) -> None:
        object.__setattr__(self, name, value)

    def _hash_buckets(self) -> tuple[int, ...] | None:
        """`hash_buckets` as 26 values: each >= 2, or 0 for every feature (fingerprints)."""
        value = self.hash_buckets
        sizes = (value,) if _is_int(value) else tuple(value) if value is not None else ()
        if sizes and all(_is_int(size) and size == 0 for size in sizes):
            if len(sizes) not in (1, md.NUM_CATEGORICAL):
                raise SpecError("hash_buckets", f"takes one value or {md.NUM_CATEGORICAL} comma-separated values; "
                                f"got {_sizes_text(sizes)}")
            return (0,) * md.NUM_CATEGORICAL
        if 0 in sizes:
            raise SpecError("hash_buckets", f"0 (full fingerprints, no modulo) must be given for every feature, "
                            f"not mixed with bucket counts; got {_sizes_text(sizes)}")
        return self._per_feature("hash_buckets", 2)

    @property
    def fingerprint_ids(self) -> bool:
        """Whether ids are full fingerprints (`hash_buckets` 0)."""
        return bool(self.hash_buckets) and not any(self.hash_buckets)

    @property
    def id_kind(self) -> str:
        return md.ID_KIND_FINGERPRINT if self.fingerprint_ids else md.ID_KIND_INDEX

    def _per_feature(self, name: str, minimum: int) -> tuple[int, ...] | None:
        """One value or one per categorical feature -> one per feature, each >= minimum."""
        value = getattr(self, name)
        if value is None:
            return None
        sizes = (value,) if _is_int(value) else tuple(value)
        if len(sizes) == 1:
            sizes *= md.NUM_CATEGORICAL
        if (len(sizes) != md.NUM_CATEGORICAL or not all(_is_int(size) for size in sizes)
                or min(sizes) < minimum):
            raise SpecError(name, f"takes one value or {md.NUM_CATEGORICAL} comma-separated values, each >= {minimum}; "
                            f"got {_sizes_text(value if not _is_int(value) else (value,))}")
        return sizes

    @property
    def vocab_mode(self) -> str:
        """One of VOCAB_MODES."""
        if self.fingerprint_ids:
            return "fingerprint"
        return "hash" if self.hash_buckets else ("top_n" if self.vocab_size else "min_frequency")

    @property
    def passes(self) -> int:
        """Reads of the input: hash mode encodes in one, the vocabulary modes count first."""
        return 1 if self.hash_buckets else 2

    @property
    def layout(self) -> md.ExamplesLayout:
        return md.ExamplesLayout(self.output)

    def options_record(self, num_shards: int) -> dict:
        """The `options` of metadata.json: the parameters that shaped the output (`num_shards` as planned)."""
        return {
            "vocab_mode": self.vocab_mode,
            "vocab_size": list(self.vocab_size) if self.vocab_size else None, "min_frequency": self.min_frequency,
            "hash_buckets": list(self.hash_buckets) if self.hash_buckets else None,
            "eval_fraction": self.eval_fraction, "negative_counts": self.negative_counts, "num_shards": num_shards, "compression_level": self.compression_level,
            "tfds_name": self.tfds_name, "tfds_data_dir": self.tfds_data_dir, "tfds_split": self.tfds_split,
            "beam_args": list(self.beam_args),
            # Only with bags, so a one-hot run's metadata.json stays as it was.
            **(self.bag_layout.options_record() if self.multi_hot_columns else {}),
        }


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
