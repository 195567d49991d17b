"""`embedopt train`: command-line flags -> `FnArgs` -> `run_fn`, or N local workers.

Each flag maps to one `FnArgs` field or one `TrainerConfig` (`custom_config`)
field; `fn_args.build_fn_args` assembles them, as for the demo. With
`--local-workers N` the command starts N copies of itself under
MultiWorkerMirroredStrategy on localhost (see local_workers.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from components.cli import HelpFormatter, positive_int
from components.trainer.run_report import PROG, SUMMARY_KEYS, report

# The flags a --preset may set: (argparse dest, TrainerConfig field). Their argparse default is None, so that
# "not given" is known: given > preset > TrainerConfig default.
PRESET_FLAGS = (("optimizer", "optimizer"), ("dense_optimizer", "dense_optimizer"),
                ("learning_rate", "learning_rate"), ("dense_learning_rate", "dense_learning_rate"),
                ("batch_size", "batch_size"), ("embedding_dim", "embedding_dim"), ("interaction", "interaction"),
                ("bottom_mlp", "bottom_mlp"), ("top_mlp", "top_mlp"), ("cross_layers", "cross_layers"),
                ("cross_rank", "cross_rank"))


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _widths(text: str) -> list[int]:
    try:
        widths = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"expected layer widths >= 1, got {text!r}")
    return widths


def _memory_budget(text: str) -> int:
    from components.trainer.planner import parse_budget

    try:
        return parse_budget(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    from components.preprocess.metadata import METADATA_FILE, TRAIN_DIR, ExamplesLayout
    from components.trainer import early_stopping as stopping
    from components.trainer import fn_args as keys
    from components.trainer.presets import PRESETS, describe

    defaults = keys.TrainerConfig()
    p = argparse.ArgumentParser(formatter_class=HelpFormatter,
        prog=PROG,
        description="Train the DLRM-style model on the preprocess output, evaluate it and export a SavedModel "
        "that serves raw logs, with the preprocessing inside (signatures serving_default: raw tf.Example with I1..I13, "
        "C1..C26; serve_tsv: raw TSV lines; serve_transformed: preprocessed tf.Example; each -> probabilities; "
        "score files with `embedopt predict`). Strategy from TF_CONFIG: several workers -> "
        "MultiWorkerMirroredStrategy, else MirroredStrategy over 2+ local GPUs, else one device.",
    )
    data = p.add_argument_group("data (FnArgs)")
    example = ExamplesLayout("DIR")
    data.add_argument("--data", help=f"preprocess output dir: sets --train-files {example.train_pattern}, --eval-files "
                      f"{example.eval_pattern} and --metadata {example.metadata_path} unless those are given")
    data.add_argument("--train-files", nargs="+", help="training file patterns (GZIP TFRecords of tf.Example)")
    data.add_argument("--eval-files", nargs="+", help="evaluation file patterns")
    data.add_argument("--metadata", help=f"the preprocess {METADATA_FILE} (FnArgs.schema_path); "
                      f"default: beside {TRAIN_DIR}")
    data.add_argument("--train-steps", type=positive_int,
                      help="total training steps; a resumed run stops at exactly this step (default: early stopping: "
                      "passes over the train split, the eval split evaluated after each, until the eval AUC has not "
                      "improved for --patience passes or --max-epochs are done; the SavedModel holds the best pass's "
                      "weights. Without an eval split: one pass)")
    data.add_argument("--eval-steps", type=positive_int, help="evaluation batches (default: enough to cover the eval split once; the rows the last batch "
                      "wraps around to are not counted twice)")
    out = p.add_argument_group("outputs (FnArgs)")
    out.add_argument("--output", help="sets --serving-model-dir OUTPUT/serving_model and --model-run-dir OUTPUT/model_run")
    out.add_argument("--serving-model-dir", help="where the SavedModel goes (chief only)")
    out.add_argument("--model-run-dir", help="checkpoints, TensorBoard logs, metrics.json, training_curve.png; "
                     "a run restarted with the same dir resumes from its latest checkpoint")
    model = p.add_argument_group("model and optimizers (custom_config)")
    names = ", ".join(keys.OPTIMIZER_NAMES)
    presets = "; ".join(f"{name}: {describe(name)}" for name in PRESETS)
    model.add_argument("--preset", choices=sorted(PRESETS), metavar="NAME",
                       help=f"start from a known model's settings ({presets}; the bottom MLP ends in the embedding "
                       "dim, the top MLP in the logit); each flag below given beside it wins "
                       "over the preset's value, so e.g. --embedding-dim 16 --batch-size 1024 scales it down for a CPU "
                       "(default: none, the defaults below)")
    model.add_argument("--optimizer", choices=keys.OPTIMIZER_NAMES, metavar="NAME",
                       help=f"optimizer of the embedding tables (sparse path): {names} "
                       f"(default: {defaults.optimizer})")
    model.add_argument("--dense-optimizer", choices=keys.OPTIMIZER_NAMES, metavar="NAME",
                       help=f"optimizer of the MLP weights, one of the names above (default: {defaults.dense_optimizer})")
    model.add_argument("--learning-rate", type=float,
                       help=f"embedding learning rate (default: {defaults.learning_rate})")
    model.add_argument("--dense-learning-rate", type=float,
                       help=f"dense learning rate (default: {defaults.dense_learning_rate})")
    model.add_argument("--batch-size", type=positive_int,
                       help=f"GLOBAL batch size, split over all replicas of all workers (default: {defaults.batch_size} "
                       f"with --train-steps; without it the largest power of two from {stopping.AUTO_BATCH_MIN} to "
                       f"{stopping.AUTO_BATCH_MAX} that makes one pass over the train split at least "
                       f"{stopping.MIN_STEPS_PER_EPOCH} steps)")
    model.add_argument("--embedding-dim", type=positive_int,
                       help="embedding width, also the bottom MLP's output width; tables have one more column for the "
                       f"wide term (default: {defaults.embedding_dim})")
    model.add_argument("--table-layout", choices=keys.TABLE_LAYOUTS,
                       help="per_feature: one table per categorical feature, sized by metadata vocab_sizes; "
                       "shared: one table of sum(vocab sizes) rows with per-feature offsets, one lookup and one "
                       f"gradient all-reduce per step instead of 26 (default: {defaults.table_layout}; per_feature "
                       "with --table-kind dynamic)")
    model.add_argument("--table-kind", choices=keys.TABLE_KINDS, default=defaults.table_kind,
                       help="fixed: a row per id (vocabulary or hash bucket); dynamic: a DynamicEmbedding per "
                       "feature keyed by full fingerprints (data from `embedopt preprocess --hash-buckets 0`), "
                       "--table-capacity rows each, a key admitted after --admit-after sightings, --eviction "
                       "choosing the key that loses its row when full, unseen or evicted keys reading --default-row; "
                       "per_feature layout; with several workers each holds the whole table, or with --table-sharding "
                       "row_wise the keys that hash to it (docs/dynamic_tables.md)")
    model.add_argument("--table-capacity", metavar="ROWS|C<i>:ROWS[,...]",
                       help="with --table-kind dynamic: rows of each table: ROWS for every feature, C<i>:ROWS per raw "
                       "column, or both (100000,C3:5000)")
    model.add_argument("--admit-after", type=positive_int,
                       help="with --table-kind dynamic: occurrences of a key (counted in a count-min sketch) before it "
                       f"gets a row; until then it reads the default row (default: {defaults.admit_after})")
    model.add_argument("--eviction", choices=keys.EVICTIONS,
                       help="with --table-kind dynamic: which key loses its row when the table is full: lru (least "
                       "recently read) or lfu (fewest reads since admission, ties to the least recently read); "
                       "never one the batch reads "
                       f"(default: {defaults.eviction})")
    model.add_argument("--default-row", choices=keys.DEFAULT_ROWS,
                       help="with --table-kind dynamic: what a key without a row reads: zeros (no parameter) or "
                       f"shared_row (one trainable row per table) (default: {defaults.default_row})")
    model.add_argument("--sketch-decay-every", type=int, metavar="STEPS",
                       help="with --table-kind dynamic and --admit-after > 1: halve the admission counts every STEPS "
                       f"steps, so old sightings fade; 0: never (default: {defaults.sketch_decay_every})")
    model.add_argument("--table-sharding", choices=keys.TABLE_SHARDINGS, default=defaults.table_sharding,
                       help="where each table lives (docs/sharding.md): data_parallel (alias mirrored): every worker "
                       "holds it and its optimizer slots; row_wise (alias row): worker r of N holds the rows with "
                       "id %% N == r; table_wise: whole tables on one worker each, packed over the workers; auto: "
                       "chosen per table from its size, --memory-budget-per-worker, N and the bytes each placement sends "
                       "(small tables data_parallel, the others row_wise, or table_wise where whole on one worker "
                       "it sends no more than row_wise). The plan is logged before "
                       "training and saved as checkpoints/plan.json; a restart under another plan or worker count "
                       "reshards the checkpoint onto it. Placements other than data_parallel need one "
                       "replica per process: --local-workers N or a multi-worker job "
                       f"(default: {defaults.table_sharding})")
    model.add_argument("--memory-budget-per-worker", metavar="BYTES", type=_memory_budget,
                       help="bytes of tables and optimizer slots one worker may hold, for the table plan: a "
                       "Kubernetes quantity (16Gi, 500M) or a number; a plan that does not fit is refused naming "
                       "the table (default: the least memory any worker reports available)")
    model.add_argument("--exchange", choices=keys.EXCHANGE_KINDS, default=defaults.exchange,
                       help="how row- and table-wise tables exchange ids and rows: all_to_all sends each owner only "
                       "the ids this worker asks of it (bytes per worker bounded by its local batch); all_gather gathers every "
                       "worker's ids and all-reduces their rows (grows with N); auto: all_to_all where this "
                       "TensorFlow has CollectiveAllToAllV2, else all_gather, or $EMBEDOPT_EXCHANGE when set. "
                       f"metrics.json's embedding_exchange says which ran (default: {defaults.exchange})")
    model.add_argument("--bag-combiner", choices=keys.BAG_COMBINERS, default=defaults.bag_combiner,
                       help="how a multi-hot feature (the metadata's multi_hot_keys) pools its bag of ids into one "
                       "vector: sum, mean (divided by the bag's length) or sqrtn (by its square root); an empty bag "
                       "gives zeros")
    model.add_argument("--interaction", choices=keys.INTERACTIONS,
                       help="dot: pairwise dot products of the feature vectors (DLRM); concat: concatenation; "
                       "dcnv2: DCN-v2 cross layers over the concatenation, x_{l+1} = x0 * (W_l x_l + b_l) + x_l, "
                       f"whose output feeds the top MLP (MLPerf DLRM-DCNv2) (default: {defaults.interaction})")
    model.add_argument("--cross-layers", type=positive_int,
                       help=f"dcnv2: number of cross layers (default: {defaults.cross_layers})")
    model.add_argument("--cross-rank", type=non_negative_int,
                       help="dcnv2: rank R of each cross layer's W = U V^T (U, V: D x R, D the concatenation's width); "
                       f"0: a full D x D matrix (default: {defaults.cross_rank})")
    model.add_argument("--bottom-mlp", type=_widths,
                       help="hidden widths of the MLP on dense features, before its last layer of --embedding-dim, "
                       "e.g. 64,32 (default: 64,32)")
    model.add_argument("--top-mlp", type=_widths,
                       help="hidden widths of the MLP after the interaction, before the logit layer (default: 64,32)")
    model.add_argument("--no-wide", action="store_true",
                       help="drop the first-order term (a per-value weight summed into the logit, stored as one "
                       "extra column of each table); default: on")
    model.add_argument("--seed", type=int, default=defaults.seed, help="initialisation and shuffling seed (default: 0)")
    run = p.add_argument_group("execution (custom_config)")
    run.add_argument("--patience", type=positive_int, default=defaults.patience,
                     help="without --train-steps: stop once this many evaluations in a row (one after each pass) "
                     "have not improved on the best eval AUC")
    run.add_argument("--max-epochs", type=positive_int, default=defaults.max_epochs,
                     help="without --train-steps: stop after this many passes over the train split at most")
    run.add_argument("--no-baseline", action="store_true",
                     help="skip the baseline, a hashed logistic regression fitted on the train split and evaluated on "
                     "the eval split, whose AUC the report compares with the model's (default: off, the baseline runs)")
    run.add_argument("--checkpoint-every", type=positive_int, default=defaults.checkpoint_every,
                     help="save a checkpoint (model + optimizer slots + step) every K steps")
    run.add_argument("--log-every", type=positive_int, default=defaults.log_every,
                     help="TensorBoard/log interval in steps")
    run.add_argument("--strategy", choices=keys.STRATEGIES, default=defaults.strategy,
                     help="auto: from TF_CONFIG and the local GPUs; mirrored: MirroredStrategy over local GPUs or the "
                     "CPU; multi_worker: MultiWorkerMirroredStrategy (TF_CONFIG); default: one device")
    run.add_argument("--mixed-precision", action="store_true",
                     help="mixed_float16 compute with dynamic loss scaling; tables and optimizer state stay float32. "
                     "Meant for GPUs: on CPU it runs, with a warning, and is slower")
    run.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
    run.add_argument("--local-workers", type=int, default=0,
                     help="start N local worker processes with TF_CONFIG on free localhost ports "
                     "(MultiWorkerMirroredStrategy); their logs are prefixed [worker i]. Stopping the launcher "
                     "(SIGTERM, Ctrl-C, --timeout) stops the workers: SIGTERM, then SIGKILL after 10 s; killing the "
                     "launcher (kill -9) kills them at once (Linux)")
    run.add_argument("--timeout", type=float,
                     help="with --local-workers: stop the workers and exit 124 after this many seconds")
    shown = p.add_argument_group("output")
    shown.add_argument("--verbose", "-v", action="store_true",
                       help="also print TensorFlow's start-up lines and its INFO logs (collectives, SavedModel)")
    shown.add_argument("--json", action="store_true",
                       help="end with the run's main metrics as one JSON line (every worker), for scripts; "
                       "metrics.json always has all of them")
    return p


def config_from_args(args: argparse.Namespace, batch_size: int | None = None):
    """The `custom_config` flags -> a validated `TrainerConfig` (ValueError naming a bad value).

    Each preset-able flag is its value when given, else the --preset's, else
    TrainerConfig's default; the batch size falls back to `batch_size` (the
    automatic one) before the default.
    """
    import dataclasses

    from components.trainer.fn_args import DYNAMIC_POLICY, TrainerConfig
    from components.trainer.presets import preset_values

    preset = preset_values(args.preset) if args.preset else {}
    chosen = {}
    for dest, field in PRESET_FLAGS:
        value = getattr(args, dest)
        if value is None:
            value = preset.get(field)
        if value is None and field == "batch_size":
            value = batch_size
        if value is not None:
            chosen[field] = tuple(value) if isinstance(value, (list, tuple)) else value
    layout = args.table_layout or ("per_feature" if args.table_kind == "dynamic" else TrainerConfig.table_layout)
    capacity = args.table_capacity
    if capacity is not None and capacity.strip().isdigit():
        capacity = int(capacity)
    config = TrainerConfig(
        table_layout=layout, table_sharding=args.table_sharding, wide=not args.no_wide,
        table_kind=args.table_kind, table_capacity=capacity,
        **{name: getattr(args, name) for name in DYNAMIC_POLICY if getattr(args, name) is not None},
        checkpoint_every=args.checkpoint_every, log_every=args.log_every, strategy=args.strategy,
        mixed_precision=args.mixed_precision, seed=args.seed, progress=not args.no_progress,
        patience=args.patience, max_epochs=args.max_epochs, baseline=not args.no_baseline,
        bag_combiner=args.bag_combiner, exchange=args.exchange,
        memory_budget_per_worker=args.memory_budget_per_worker,
    )
    return dataclasses.replace(config, **chosen)


def uses_auto_batch(args: argparse.Namespace) -> bool:
    """Early stopping (no --train-steps) without --batch-size (or a --preset's) picks the batch size from the train
    rows."""
    from components.trainer.presets import preset_values

    preset_batch = args.preset and "batch_size" in preset_values(args.preset)
    return args.batch_size is None and args.train_steps is None and not preset_batch


def fn_args_from_args(args: argparse.Namespace):
    """The flags -> `FnArgs`: --data names an `ExamplesLayout`, --output the two output folders."""
    from components.preprocess.metadata import ExamplesLayout, load_metadata
    from components.trainer.early_stopping import auto_batch_size
    from components.trainer.fn_args import MODEL_RUN_SUBDIR, SERVING_MODEL_SUBDIR, build_fn_args

    train_files, eval_files, metadata = args.train_files, args.eval_files, args.metadata
    if args.data:
        layout = ExamplesLayout(args.data)
        train_files = train_files or [layout.train_pattern]
        eval_files = eval_files or [layout.eval_pattern]
        metadata = metadata or layout.metadata_path
    if not train_files or not eval_files:
        raise ValueError("give --data DIR, or both --train-files and --eval-files")
    serving = args.serving_model_dir or (args.output and os.path.join(args.output, SERVING_MODEL_SUBDIR))
    run_dir = args.model_run_dir or (args.output and os.path.join(args.output, MODEL_RUN_SUBDIR))
    if not serving or not run_dir:
        raise ValueError("give --output DIR, or both --serving-model-dir and --model-run-dir")
    batch_size = None
    if uses_auto_batch(args):
        found = metadata or ExamplesLayout.of_split_pattern(train_files[0]).metadata_path
        batch_size = auto_batch_size(load_metadata(found).row_counts["train"])
    return build_fn_args(train_files=train_files, eval_files=eval_files, metadata_path=metadata,
                         serving_model_dir=serving, model_run_dir=run_dir,
                         config=config_from_args(args, batch_size),
                         train_steps=args.train_steps, eval_steps=args.eval_steps)


LAUNCHER_ONLY = ("--local-workers", "--timeout")


def _without_local_workers(argv: list[str]) -> list[str]:
    """The worker's argv: the launcher's without the flags only the launcher reads."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in LAUNCHER_ONLY:
            skip = True
        elif not arg.startswith(tuple(f"{flag}=" for flag in LAUNCHER_ONLY)):
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    from components.quiet import configure_logging, import_tensorflow
    from components.trainer.local_workers import follow_launcher

    follow_launcher()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    if args.local_workers < 0:
        print(f"{PROG}: --local-workers must be >= 0, got {args.local_workers}", file=sys.stderr)
        return 2
    if args.timeout is not None and (not args.local_workers or args.timeout <= 0):
        print(f"{PROG}: --timeout needs --local-workers and a value > 0, got {args.timeout}", file=sys.stderr)
        return 2
    if args.local_workers:
        from components.trainer.local_workers import launch

        return launch(_without_local_workers(argv) + ["--no-progress"], args.local_workers,
                      timeout_seconds=args.timeout)
    import_tensorflow(args.verbose)
    try:
        from components.trainer.run import run_fn
        from components.trainer.strategy import cluster_from_env

        if not args.verbose and not cluster_from_env().is_chief:
            # The chief reports progress; the other workers speak only of problems.
            logging.getLogger("components").setLevel(logging.WARNING)

        fn_args = fn_args_from_args(args)
        metrics = run_fn(fn_args)
    except ValueError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(f"{PROG}: {json.dumps({k: metrics[k] for k in SUMMARY_KEYS})}")
    if cluster_from_env().is_chief:
        print(report(metrics, fn_args.model_run_dir, auto_batch=uses_auto_batch(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
