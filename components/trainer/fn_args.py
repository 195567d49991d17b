"""`FnArgs` (TFX's field names) and the trainer settings carried in `custom_config`.

TFX calls `run_fn(fn_args)` with an object holding `train_files`,
`eval_files`, `train_steps`, `eval_steps`, `serving_model_dir`,
`model_run_dir`, `schema_path` and `custom_config`; our `FnArgs` has the same
fields, so `run_fn` accepts either. Model and optimizer settings travel in
`custom_config` under the keys below; `TrainerConfig.from_custom_config`
validates them and fills in defaults. `build_fn_args` is the one place our
`FnArgs` is made (the trainer CLI, the demo and the benchmarks go through
it); `fn_args_for` makes it from a preprocess `ExamplesLayout`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

from components.preprocess.metadata import ExamplesLayout, load_metadata
from components.trainer.early_stopping import DEFAULT_MAX_EPOCHS, DEFAULT_PATIENCE

# custom_config keys.
OPTIMIZER = "optimizer"
DENSE_OPTIMIZER = "dense_optimizer"
LEARNING_RATE = "learning_rate"
DENSE_LEARNING_RATE = "dense_learning_rate"
BATCH_SIZE = "batch_size"
EMBEDDING_DIM = "embedding_dim"
TABLE_LAYOUT = "table_layout"
TABLE_SHARDING = "table_sharding"
TABLE_KIND = "table_kind"
TABLE_CAPACITY = "table_capacity"
# The dynamic tables' policy (optimizers.DynamicEmbedding's admit_after, eviction and default).
ADMIT_AFTER = "admit_after"
EVICTION = "eviction"
DEFAULT_ROW = "default_row"
SKETCH_DECAY_EVERY = "sketch_decay_every"
DYNAMIC_POLICY = (ADMIT_AFTER, EVICTION, DEFAULT_ROW, SKETCH_DECAY_EVERY)
INTERACTION = "interaction"
BOTTOM_MLP = "bottom_mlp"
TOP_MLP = "top_mlp"
CHECKPOINT_EVERY = "checkpoint_every"
LOG_EVERY = "log_every"
STRATEGY = "strategy"
WIDE = "wide"
MIXED_PRECISION = "mixed_precision"
SEED = "seed"
PROGRESS = "progress"
PATIENCE = "patience"
MAX_EPOCHS = "max_epochs"
BASELINE = "baseline"
METADATA_PATH = "metadata_path"
BAG_COMBINER = "bag_combiner"
CROSS_LAYERS = "cross_layers"
CROSS_RANK = "cross_rank"
EXCHANGE = "exchange"
MEMORY_BUDGET = "memory_budget_per_worker"
# Not a field: `from_custom_config` expands it (components/trainer/presets.py).
PRESET = "preset"

# `optimizers.OPTIMIZERS`' names, kept here so that `embedopt train --help` needs no TensorFlow (a test keeps
# the two equal).
OPTIMIZER_NAMES = ("sgd", "momentum", "decaying_sgd", "adam", "lazy_adam", "adamw", "adagrad", "rowwise_adagrad",
                   "ftrl")
TABLE_LAYOUTS = ("per_feature", "shared")
# Per-table placements (components/trainer/planner.py); "mirrored" and "row" stay as aliases of the first two.
TABLE_SHARDINGS = ("auto", "data_parallel", "row_wise", "table_wise", "mirrored", "row")
# How row- and table-wise tables exchange ids and rows (optimizers/all_to_all.py); auto: all_to_all where TF has it.
EXCHANGE_KINDS = ("auto", "all_to_all", "all_gather")
# fixed: a row per id of a vocabulary or hash bucket (index ids); dynamic: `optimizers.DynamicEmbedding`, keyed by
# fingerprint ids (preprocess --hash-buckets 0), `table_capacity` rows each (components/trainer/dynamic_tables.py).
TABLE_KINDS = ("fixed", "dynamic")
EVICTIONS = ("lru", "lfu")  # optimizers.dynamic.EVICTIONS, kept here so that --help needs no TensorFlow
DEFAULT_ROWS = ("zeros", "shared_row")  # optimizers.dynamic.DEFAULTS
INTERACTIONS = ("dot", "concat", "dcnv2")
BAG_COMBINERS = ("sum", "mean", "sqrtn")
STRATEGIES = ("auto", "mirrored", "multi_worker", "default")


@dataclasses.dataclass
class FnArgs:
    """The subset of TFX's `FnArgs` that `run_fn` reads (same names).

    `schema_path` is our `metadata.json` (a TFX schema file is not used; when
    it is not a metadata.json, `custom_config["metadata_path"]` or the
    `metadata.json` of the `ExamplesLayout` holding the train files is used
    instead).
    """

    train_files: list[str]
    eval_files: list[str]
    train_steps: int | None  # None: early stopping (components/trainer/early_stopping.py)
    eval_steps: int
    serving_model_dir: str
    model_run_dir: str
    schema_path: str | None = None
    custom_config: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    """Validated `custom_config`. Learning rates of None take each optimizer's default."""

    optimizer: str = "lazy_adam"
    dense_optimizer: str = "adam"
    learning_rate: float | None = 1e-3
    dense_learning_rate: float | None = 1e-3
    batch_size: int = 1024
    embedding_dim: int = 16
    # One shared table: measured on the demo data (26 hashed tables, 3.07M rows, batch 512, 2 cores),
    # 2 local workers took 0.060 s/step against 0.204 s with a table per feature (each table's
    # IndexedSlices is its own all-gather), and one device 0.029 against 0.032 s/step.
    table_layout: str = "shared"
    # mirrored: every replica holds every table; row: replica r of N holds the rows id % N == r.
    table_sharding: str = "mirrored"
    interaction: str = "dot"
    bottom_mlp: tuple[int, ...] = (64, 32)
    top_mlp: tuple[int, ...] = (64, 32)
    wide: bool = True
    checkpoint_every: int = 1000
    log_every: int = 100
    strategy: str = "auto"
    mixed_precision: bool = False
    seed: int = 0
    progress: bool = True
    # Without train_steps: stop once the eval AUC has not improved for `patience` epochs, at most `max_epochs`.
    patience: int = DEFAULT_PATIENCE
    max_epochs: int = DEFAULT_MAX_EPOCHS
    # Fit and evaluate the hashed logistic regression baseline (components/trainer/baseline.py).
    baseline: bool = True
    # How a multi-hot feature's bag of ids pools into one vector (the metadata's multi_hot_keys).
    bag_combiner: str = "sum"
    # DCN-v2 (interaction "dcnv2"): cross layers, and the rank of their W = U V^T (0: full-rank W).
    cross_layers: int = 3
    cross_rank: int = 0
    # "dynamic": one DynamicEmbedding per feature, with `table_capacity` rows: an int for every feature, or the
    # text "N", "C<i>:N,..." or "N,C<i>:N,..." (a default and per raw column C1..C26).
    table_kind: str = "fixed"
    table_capacity: int | str | None = None
    # Dynamic tables only: occurrences before a key gets a row, "lru" or "lfu", what a key without a row reads,
    # and every how many steps the admission sketch's counts are halved (0: never).
    admit_after: int = 1
    eviction: str = "lru"
    default_row: str = "zeros"
    sketch_decay_every: int = 0
    metadata_path: str | None = None
    # Row- and table-wise tables: "auto", "all_to_all" or "all_gather" (EMBEDOPT_EXCHANGE overrides "auto").
    exchange: str = "auto"
    # Bytes of tables and slots a worker may hold, for the planner; None: what the device reports.
    memory_budget_per_worker: int | None = None

    def __post_init__(self):
        for name in (OPTIMIZER, DENSE_OPTIMIZER):
            value = getattr(self, name)
            if value not in OPTIMIZER_NAMES:
                raise ValueError(f"{name}: unknown optimizer {value!r}; valid names: {', '.join(OPTIMIZER_NAMES)}")
        for name in (LEARNING_RATE, DENSE_LEARNING_RATE):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        for name in (BATCH_SIZE, EMBEDDING_DIM, CHECKPOINT_EVERY, LOG_EVERY, PATIENCE, MAX_EPOCHS, CROSS_LAYERS):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.cross_rank, bool) or not isinstance(self.cross_rank, int) or self.cross_rank < 0:
            raise ValueError(f"{CROSS_RANK} must be an integer >= 0 (0: full rank), got {self.cross_rank!r}")
        for name, valid in ((TABLE_LAYOUT, TABLE_LAYOUTS), (TABLE_SHARDING, TABLE_SHARDINGS), (INTERACTION, INTERACTIONS),
                            (STRATEGY, STRATEGIES), (BAG_COMBINER, BAG_COMBINERS),
                            (EXCHANGE, EXCHANGE_KINDS)):
            if getattr(self, name) not in valid:
                raise ValueError(f"{name} must be one of {valid}, got {getattr(self, name)!r}")
        budget = self.memory_budget_per_worker
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
            raise ValueError(f"{MEMORY_BUDGET} must be a number of bytes >= 1, got {budget!r}")
        self._check_table_kind()
        for name in (WIDE, BASELINE):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in (BOTTOM_MLP, TOP_MLP):
            value = getattr(self, name)
            if not all(isinstance(u, int) and u >= 1 for u in value):
                raise ValueError(f"{name} must be a list of layer widths >= 1, got {value!r}")

    def _check_table_kind(self) -> None:
        if self.table_kind not in TABLE_KINDS:
            raise ValueError(f"{TABLE_KIND} must be one of {TABLE_KINDS}, got {self.table_kind!r}")
        value = self.admit_after
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{ADMIT_AFTER} must be an integer >= 1 (1: a key gets a row on first sight), "
                             f"got {value!r}")
        value = self.sketch_decay_every
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{SKETCH_DECAY_EVERY} must be an integer >= 0 (0: never), got {value!r}")
        if value and self.admit_after == 1:
            raise ValueError(f"{SKETCH_DECAY_EVERY} {value} needs {ADMIT_AFTER} >= 2: with {ADMIT_AFTER} 1 there is "
                             "no admission sketch to decay")
        for name, valid in ((EVICTION, EVICTIONS), (DEFAULT_ROW, DEFAULT_ROWS)):
            if getattr(self, name) not in valid:
                raise ValueError(f"{name} must be one of {valid}, got {getattr(self, name)!r}")
        if self.table_kind == "fixed":
            if self.table_capacity is not None:
                raise ValueError(f"{TABLE_CAPACITY} {self.table_capacity!r} needs {TABLE_KIND} 'dynamic' "
                                 "(fixed tables are sized by the metadata's vocab_sizes)")
            changed = [name for name in DYNAMIC_POLICY if getattr(self, name) != getattr(TrainerConfig, name)]
            if changed:
                raise ValueError(f"{', '.join(changed)} set, but they only apply to {TABLE_KIND} 'dynamic'")
            return
        if self.table_capacity is None:
            raise ValueError(f"{TABLE_KIND} 'dynamic' needs {TABLE_CAPACITY}: rows per table (N, or C<i>:N per "
                             "feature)")
        table_capacities(self.table_capacity)
        if self.table_layout != "per_feature":
            raise ValueError(f"{TABLE_KIND} 'dynamic' needs {TABLE_LAYOUT} 'per_feature' (a dynamic table per "
                             f"feature; one shared dynamic table is not built yet), got {self.table_layout!r}")
        if self.table_sharding not in ("mirrored", "data_parallel", "row", "row_wise"):
            raise ValueError(f"{TABLE_KIND} 'dynamic' takes {TABLE_SHARDING} data_parallel (alias mirrored: every "
                             "worker holds the whole table) or row_wise (alias row: each worker the keys that hash "
                             f"to it), got {self.table_sharding!r}")

    def dynamic_policy(self) -> dict:
        """`optimizers.DynamicEmbedding` keyword arguments of the dynamic tables' policy."""
        return dict(admit_after=self.admit_after, eviction=self.eviction, default=self.default_row,
                    sketch_decay_every=self.sketch_decay_every)

    def capacities(self, categorical_keys) -> list[int]:
        """Rows of each feature's dynamic table, in `categorical_keys` order (cat_i is raw column C<i+1>)."""
        default, named = table_capacities(self.table_capacity)
        from components.preprocess.metadata import RAW_CATEGORICAL

        out = []
        for i, key in enumerate(categorical_keys):
            raw = RAW_CATEGORICAL[i] if i < len(RAW_CATEGORICAL) else key
            rows = named.get(raw, default)
            if rows is None:
                raise ValueError(f"{TABLE_CAPACITY} {self.table_capacity!r} gives no capacity for {raw} ({key}); "
                                 "add a default N or C<i>:N for it")
            out.append(rows)
        return out

    @classmethod
    def from_custom_config(cls, custom_config: dict[str, Any] | None) -> TrainerConfig:
        """Raises ValueError naming unknown keys or bad values.

        A `"preset"` key (e.g. `"mlperf-dlrmv2"`) fills in the fields that
        preset sets; the other keys given win over it.
        """
        from components.trainer.presets import preset_values

        config = dict(custom_config or {})
        preset = config.pop(PRESET, None)
        if preset is not None:
            config = {**preset_values(preset), **config}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"custom_config: unknown keys {unknown}; valid keys: {sorted(known | {PRESET})}")
        for name in (BOTTOM_MLP, TOP_MLP):
            if name in config:
                config[name] = tuple(config[name])
        return cls(**config)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data[BOTTOM_MLP], data[TOP_MLP] = list(self.bottom_mlp), list(self.top_mlp)
        if self.table_kind == "fixed":  # left out, so a fixed-table run records the config it recorded before
            for name in (TABLE_KIND, TABLE_CAPACITY, *DYNAMIC_POLICY):
                del data[name]
        # Likewise the table plan's inputs (issue 21) at their defaults.
        if self.exchange == "auto":
            del data[EXCHANGE]
        if self.memory_budget_per_worker is None:
            del data[MEMORY_BUDGET]
        return data


def table_capacities(value) -> tuple[int | None, dict[str, int]]:
    """`table_capacity` (int or text "N", "C<i>:N,...", "N,C<i>:N") -> (default, {raw column: rows}); ValueError."""
    from components.preprocess.bags import parse_caps

    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{TABLE_CAPACITY} must be an integer or text like '100000' or 'C1:100000,C2:5000', "
                         f"got {value!r}")
    try:
        return parse_caps(str(value))
    except ValueError as err:
        raise ValueError(f"{TABLE_CAPACITY} takes N or C<i>:N parts (N >= 1): {err}") from None


# Where a run's two output folders go under one output directory (`embedopt train --output`, the demo).
SERVING_MODEL_SUBDIR = "serving_model"
MODEL_RUN_SUBDIR = "model_run"


def build_fn_args(*, train_files: list[str], eval_files: list[str], metadata_path: str | None,
                  serving_model_dir: str, model_run_dir: str, config: TrainerConfig, train_steps: int | None,
                  eval_steps: int | None = None) -> FnArgs:
    """Our `FnArgs`, with `config` as `custom_config`.

    `metadata_path` (None: beside the train files) becomes `schema_path` and
    `custom_config["metadata_path"]`. `eval_steps` None covers the eval split
    once: ceil(eval rows / batch size), at least 1. `train_steps` None trains with early stopping.
    """
    if metadata_path:
        config = dataclasses.replace(config, metadata_path=metadata_path)
    custom_config = config.to_json()
    if config.metadata_path is None:
        del custom_config[METADATA_PATH]
    if eval_steps is None:
        found = metadata_path or ExamplesLayout.of_split_pattern(train_files[0]).metadata_path
        eval_steps = max(1, math.ceil(load_metadata(found).row_counts["eval"] / config.batch_size))
    return FnArgs(train_files=list(train_files), eval_files=list(eval_files), train_steps=train_steps,
                  eval_steps=eval_steps, serving_model_dir=serving_model_dir, model_run_dir=model_run_dir,
                  schema_path=metadata_path, custom_config=custom_config)


def fn_args_for(layout: ExamplesLayout, output: str, config: TrainerConfig, train_steps: int | None,
                eval_steps: int | None = None) -> FnArgs:
    """FnArgs training on every shard of `layout`, writing OUTPUT/serving_model and OUTPUT/model_run."""
    return build_fn_args(train_files=[layout.train_pattern], eval_files=[layout.eval_pattern],
                         metadata_path=layout.metadata_path,
                         serving_model_dir=os.path.join(output, SERVING_MODEL_SUBDIR),
                         model_run_dir=os.path.join(output, MODEL_RUN_SUBDIR),
                         config=config, train_steps=train_steps, eval_steps=eval_steps)


def example_pattern(split: str) -> str:
    """How error messages show the preprocess output of `split`: DIR/Split-<split>/*.tfrecord.gz."""
    return ExamplesLayout("DIR").split_pattern(split) + ".tfrecord.gz"


def check_fn_args(fn_args) -> None:
    """Raises ValueError for steps < 1 (train_steps None is early stopping) or missing directories/file lists."""
    if not fn_args.train_files:
        raise ValueError(f"train_files is empty; pass the preprocess output, e.g. {example_pattern('train')}")
    if not fn_args.eval_files:
        raise ValueError(f"eval_files is empty; pass the preprocess output, e.g. {example_pattern('eval')}")
    steps = fn_args.train_steps
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"train_steps must be an integer >= 1, or None for early stopping, got {steps!r}")
    if not isinstance(fn_args.eval_steps, int) or fn_args.eval_steps < 1:
        raise ValueError(f"eval_steps must be an integer >= 1, got {fn_args.eval_steps!r}")
    for name in ("serving_model_dir", "model_run_dir"):
        path = getattr(fn_args, name)
        if not path:
            raise ValueError(f"{name} is empty; pass a directory to write to")
        blocked = _file_on_the_way(path)
        if blocked:
            raise ValueError(f"{name} {path!r}: {blocked!r} is a file, not a directory; choose a directory path")


def _file_on_the_way(path: str) -> str | None:
    """The existing file at `path` or at one of its parents (local paths), which would stop any write there."""
    if "://" in path:
        return None
    current = os.path.abspath(path)
    while True:
        if os.path.exists(current):
            return None if os.path.isdir(current) else current
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent


def metadata_location(fn_args, config: TrainerConfig) -> str:
    """Where metadata.json is: schema_path if it is one, else custom_config, else in the train files' layout."""
    schema = getattr(fn_args, "schema_path", None)
    if schema and (os.path.isdir(schema) or schema.endswith(".json")):
        return schema
    if config.metadata_path:
        return config.metadata_path
    files = [fn_args.train_files] if isinstance(fn_args.train_files, str) else list(fn_args.train_files)
    return ExamplesLayout.of_split_pattern(files[0]).metadata_path
