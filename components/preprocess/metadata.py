"""Names, on-disk layout, feature spec and `metadata.json`: the contract with the trainer.

The preprocess pipeline writes `DIR/metadata.json`; the reader and the trainer
read it back with `load_metadata`. All key names live here so no other module
spells them as string literals, and `ExamplesLayout` is the one object that
knows where things are under DIR.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

FORMAT_VERSION = 1
LABEL_KEY = "label"
DENSE_KEY = "dense"
NUM_DENSE = 13
NUM_CATEGORICAL = 26
CATEGORICAL_KEYS = tuple(f"cat_{i}" for i in range(NUM_CATEGORICAL))

# Raw column names (Criteo Kaggle convention), used for CSV headers and TFDS features.
RAW_LABEL = "label"
RAW_DENSE = tuple(f"I{i}" for i in range(1, NUM_DENSE + 1))
RAW_CATEGORICAL = tuple(f"C{i}" for i in range(1, NUM_CATEGORICAL + 1))
RAW_COLUMNS = (RAW_LABEL, *RAW_DENSE, *RAW_CATEGORICAL)

METADATA_FILE = "metadata.json"
TRAIN_DIR = "Split-train"
EVAL_DIR = "Split-eval"
VOCAB_DIR = "vocab"
DEAD_LETTER_DIR = "dead_letter"
SPLITS = ("train", "eval")
SPLIT_DIRS = {"train": TRAIN_DIR, "eval": EVAL_DIR}
SYNTH_META_SUFFIX = ".meta.json"

# What a categorical id is (metadata.json's `id_kind`). "index": a row number in [0, vocab size), 0 for missing
# or out of vocabulary (every mode but one; metadata written before `id_kind` existed). "fingerprint"
# (`--hash-buckets 0`): the value's full FarmHash Fingerprint64 as a signed int64, no modulo, no vocabulary;
# its vocab sizes are 0 (no bound) and a missing value is `MISSING_KEY`.
ID_KIND_INDEX = "index"
ID_KIND_FINGERPRINT = "fingerprint"
ID_KINDS = (ID_KIND_INDEX, ID_KIND_FINGERPRINT)
MISSING_KEY = 0


def vocab_file(output_dir: str, key: str) -> str:
    """DIR/vocab/<key>.txt: line k (1-based) holds the value with id k."""
    return os.path.join(output_dir, VOCAB_DIR, f"{key}.txt")


@dataclasses.dataclass(frozen=True)
class ExamplesLayout:
    """Where a preprocess output directory (TFX ExampleGen layout) keeps each thing; every reader asks it.

    `root` may be local or remote (gs://, ...); the paths are only joined, never checked.
    """

    root: str

    @classmethod
    def of_split_pattern(cls, pattern: str) -> ExamplesLayout:
        """The layout whose split folder holds `pattern`, e.g. DIR/Split-train/* -> DIR."""
        return cls(os.path.dirname(os.path.dirname(pattern)))

    def split_dir(self, split: str) -> str:
        if split not in SPLIT_DIRS:
            raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        return os.path.join(self.root, SPLIT_DIRS[split])

    def split_pattern(self, split: str) -> str:
        """Every shard of `split`: DIR/Split-<split>/*."""
        return os.path.join(self.split_dir(split), "*")

    @property
    def train_pattern(self) -> str:
        return self.split_pattern("train")

    @property
    def eval_pattern(self) -> str:
        return self.split_pattern("eval")

    @property
    def metadata_path(self) -> str:
        return os.path.join(self.root, METADATA_FILE)

    @property
    def vocab_dir(self) -> str:
        return os.path.join(self.root, VOCAB_DIR)

    def vocab_file(self, key: str) -> str:
        return vocab_file(self.root, key)

    @property
    def dead_letter_dir(self) -> str:
        return os.path.join(self.root, DEAD_LETTER_DIR)

    def metadata(self) -> Metadata:
        """The parsed metadata.json; raises ValueError when it is missing or invalid."""
        return load_metadata(self.metadata_path)

    @property
    def row_counts(self) -> dict[str, int]:
        """Rows per split, from metadata.json."""
        return self.metadata().row_counts


BAG_FEATURE = {"dtype": "int64", "shape": [None], "ragged": True}


def feature_spec(multi_hot_keys=()) -> dict[str, dict[str, Any]]:
    """The `tf.Example` layout: name -> {"dtype", "shape"}; fixed length, but for the bag (multi-hot) keys, whose
    entry is `BAG_FEATURE` (0..n int64 ids, read as a ragged row)."""
    spec = {
        LABEL_KEY: {"dtype": "int64", "shape": [1]},
        DENSE_KEY: {"dtype": "float32", "shape": [NUM_DENSE]},
    }
    spec.update({key: dict(BAG_FEATURE) if key in multi_hot_keys else {"dtype": "int64", "shape": [1]}
                 for key in CATEGORICAL_KEYS})
    return spec


@dataclasses.dataclass(frozen=True)
class Metadata:
    """Parsed `metadata.json`.

    `vocab_sizes[key]` is the exclusive upper bound of the ids of feature
    `key`; id 0 means missing or out of vocabulary. `multi_hot_keys` are the
    categorical keys stored as bags (0..n ids per example; empty: every key
    is one-hot, as in metadata written before bags existed), and
    `bag_stats[key]` says how many ids their examples hold and how many the
    cap (`options["max_bag_length"]`) cut off. `id_kind` is one of `ID_KINDS`
    (see there): with "fingerprint" every vocab size is 0 and an id is any int64.
    """

    vocab_sizes: dict[str, int]
    row_counts: dict[str, int]
    dead_letter_count: int
    input_pattern: str
    format: str
    options: dict[str, Any]
    feature_spec: dict[str, dict[str, Any]] = dataclasses.field(default_factory=feature_spec)
    label_key: str = LABEL_KEY
    dense_key: str = DENSE_KEY
    num_dense: int = NUM_DENSE
    categorical_keys: tuple[str, ...] = CATEGORICAL_KEYS
    format_version: int = FORMAT_VERSION
    synth_metadata: dict[str, Any] | None = None
    multi_hot_keys: tuple[str, ...] = ()
    bag_stats: dict[str, dict[str, int]] | None = None
    id_kind: str = ID_KIND_INDEX

    @property
    def fingerprint_ids(self) -> bool:
        """Whether the ids are raw 64-bit fingerprints (keys for dynamic tables), not rows of a fixed table."""
        return self.id_kind == ID_KIND_FINGERPRINT

    def is_bag(self, key: str) -> bool:
        """Whether feature `key` holds a bag of ids (a ragged row) rather than one id."""
        return key in self.multi_hot_keys

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["categorical_keys"] = list(self.categorical_keys)
        # Left out when unused, so a one-hot run writes the same metadata.json as before bags existed.
        for name in ("synth_metadata", "bag_stats"):
            if data[name] is None:
                del data[name]
        if self.multi_hot_keys:
            data["multi_hot_keys"] = list(self.multi_hot_keys)
        else:
            del data["multi_hot_keys"]
        if self.id_kind == ID_KIND_INDEX:  # so that index ids write the metadata.json of before
            del data["id_kind"]
        return data


_REQUIRED = (
    "format_version", "label_key", "dense_key", "num_dense", "categorical_keys", "vocab_sizes",
    "feature_spec", "row_counts", "dead_letter_count", "input_pattern", "format", "options",
)


def metadata_from_json(data: dict[str, Any], where: str = "metadata") -> Metadata:
    """Validates a decoded `metadata.json`; raises ValueError naming the problem."""
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise ValueError(f"{where}: missing fields {missing}")
    if data["format_version"] != FORMAT_VERSION:
        raise ValueError(f"{where}: format_version {data['format_version']!r}, expected {FORMAT_VERSION}")
    keys = tuple(data["categorical_keys"])
    if set(data["vocab_sizes"]) != set(keys):
        raise ValueError(f"{where}: vocab_sizes keys {sorted(data['vocab_sizes'])} != categorical_keys {list(keys)}")
    id_kind = data.get("id_kind", ID_KIND_INDEX)
    if id_kind not in ID_KINDS:
        raise ValueError(f"{where}: id_kind {id_kind!r} must be one of {list(ID_KINDS)}")
    if id_kind == ID_KIND_FINGERPRINT:
        bad = {k: v for k, v in data["vocab_sizes"].items() if v != 0}
        if bad:
            raise ValueError(f"{where}: fingerprint ids have no vocabulary: vocab sizes must be 0, got {bad}")
    else:
        bad = {k: v for k, v in data["vocab_sizes"].items() if not isinstance(v, int) or v < 1}
        if bad:
            raise ValueError(f"{where}: vocab sizes must be integers >= 1, got {bad}")
    spec = data["feature_spec"]
    expected = {data["label_key"], data["dense_key"], *keys}
    if set(spec) != expected:
        raise ValueError(f"{where}: feature_spec keys {sorted(spec)} != {sorted(expected)}")
    if spec[data["dense_key"]].get("shape") != [data["num_dense"]]:
        raise ValueError(f"{where}: feature_spec[{data['dense_key']!r}] shape must be [{data['num_dense']}]")
    bags = tuple(data.get("multi_hot_keys") or ())
    unknown = [key for key in bags if key not in keys]
    if unknown:
        raise ValueError(f"{where}: multi_hot_keys {unknown} are not categorical_keys {list(keys)}")
    for key in keys:
        ragged = bool(spec[key].get("ragged"))
        if ragged != (key in bags):
            raise ValueError(f"{where}: feature_spec[{key!r}] is {'ragged' if ragged else 'fixed length'}, but {key!r} "
                             f"is {'' if key in bags else 'not '}in multi_hot_keys {list(bags)}")
    if set(data["row_counts"]) != set(SPLITS):
        raise ValueError(f"{where}: row_counts must have keys {list(SPLITS)}, got {sorted(data['row_counts'])}")
    fields = {f.name for f in dataclasses.fields(Metadata)}
    kwargs = {k: v for k, v in data.items() if k in fields}
    kwargs["categorical_keys"] = keys
    kwargs["multi_hot_keys"] = bags
    return Metadata(**kwargs)


def load_metadata(path_or_dir: str | os.PathLike[str]) -> Metadata:
    """Reads `metadata.json` from a file path or from the preprocess output dir."""
    path = os.fspath(path_or_dir)
    if os.path.isdir(path):
        path = ExamplesLayout(path).metadata_path
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"no metadata file at {path!r}; run `embedopt preprocess` first") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    return metadata_from_json(data, where=path)


def write_metadata(metadata: Metadata, output_dir: str) -> str:
    path = ExamplesLayout(output_dir).metadata_path
    with open(path, "w", encoding="utf-8") as f:
        json.dump(metadata.to_json(), f, indent=2, sort_keys=True)
        f.write("\n")
    return path
