"""`run_fn(fn_args)`: train, evaluate and export (the TFX Trainer module contract).

Steps: validate the arguments and metadata -> choose the strategy from
TF_CONFIG -> build model and both optimizers in `strategy.scope()` -> restore
the latest checkpoint, if any -> train the remaining `train_steps - step`
steps with checkpoints every `checkpoint_every` steps -> evaluate
`eval_steps` global batches -> export the SavedModel and write metrics,
curve and TensorBoard logs. An empty train split is refused before anything
is built; an empty eval split skips the evaluation (metrics.json then has
`eval_auc` null and an `eval_note`) and the model is still exported. The
chief deletes the temp folders of checkpoint saves that a kill interrupted.
Every worker runs every step (collectives need all of them); only the chief
writes to the real directories, the others write to temporary ones that are
deleted afterwards. With `table_sharding="row"` every worker also checkpoints
its own shard under `model_run_dir`, and the chief exports the tables
gathered whole (`components/trainer/sharding.py`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from components.lockfile import LockedError, lock_inside
from components.preprocess.metadata import load_metadata
from components.preprocess.reader import make_dataset
from components.trainer import artifacts
from components.trainer.export import export_saved_model
from components.trainer.fn_args import TrainerConfig, check_fn_args, metadata_location
from components.trainer.loop import TrainState, build_optimizers, evaluate, make_train_step, train
from components.trainer.loss_scale import DynamicLossScale
from components.trainer.model import build_model
from components.trainer.sharding import (barrier, place_for, reshard, rows_per_replica, weights_checksum,
                                         whole_table_model)
from components.trainer.strategy import choose_strategy, cluster_from_env
from components.trainer.tf_errors import training_error

log = logging.getLogger(__name__)


def _files(patterns) -> list[str]:
    return [patterns] if isinstance(patterns, str) else list(patterns)


def _matching(patterns) -> list[str]:
    return sorted({f for p in _files(patterns) for f in tf.io.gfile.glob(p)})


def _no_files_error(name: str, patterns) -> ValueError:
    return ValueError(f"{name}: no files match {_files(patterns)!r}; expected the preprocess output, "
                      "e.g. DIR/Split-train/*.tfrecord.gz")


def _holds_records(files: list[str]) -> bool:
    """True when at least one of the (GZIP TFRecord) files holds a record; reads no further than that."""
    return bool(files) and any(True for _ in tf.data.TFRecordDataset(files, compression_type="GZIP").take(1))


def _check_train_split(files: list[str], patterns, metadata, metadata_path: str) -> None:
    """Raises ValueError, before anything is built, when there is nothing to train on (`files` match `patterns`)."""
    rows = metadata.row_counts["train"]
    if rows and not files:
        raise _no_files_error("train_files", patterns)
    if not rows or not _holds_records(files):
        raise ValueError(f"the train split is empty: {metadata_path} has row_counts['train'] = {rows}, and the "
                         f"{len(files)} file(s) matching {_files(patterns)!r} hold no record. Preprocess again with "
                         "an --eval-fraction below 1 (or more input), or pass other --train-files")


def _empty_eval_note(patterns, metadata, metadata_path: str) -> str | None:
    """Why evaluation is skipped (an empty eval split), or None when there is something to evaluate.

    Raises ValueError when the metadata counts eval rows but no file matches
    `patterns` (a wrong path rather than an empty split).
    """
    files, rows = _matching(patterns), metadata.row_counts["eval"]
    if rows and not files:
        raise _no_files_error("eval_files", patterns)
    if rows and _holds_records(files):
        return None
    return (f"the eval split is empty ({metadata_path} has row_counts['eval'] = {rows}; {len(files)} file(s) match "
            f"{_files(patterns)!r}, holding no record): evaluation skipped, the model is exported without eval "
            "metrics. Preprocess with --eval-fraction > 0 to evaluate")


def _distributed_dataset(strategy, patterns, metadata, global_batch, *, shuffle, seed, skip_steps=0):
    """Per-replica batches; `skip_steps` steps' worth are dropped first, so a resumed run reads on where the
    checkpointed one stopped (the input order is a function of the seed, see `make_dataset`)."""
    def dataset_fn(context: tf.distribute.InputContext):
        replicas_per_pipeline = context.num_replicas_in_sync // context.num_input_pipelines
        return make_dataset(_files(patterns), metadata, context.get_per_replica_batch_size(global_batch),
                            shuffle=shuffle, num_epochs=None, input_context=context, seed=seed,
                            drop_remainder=True, skip_batches=skip_steps * replicas_per_pipeline)

    return strategy.distribute_datasets_from_function(dataset_fn)


@contextlib.contextmanager
def _timed(phases: dict[str, float], name: str):
    start = time.perf_counter()
    yield
    phases[name] = time.perf_counter() - start
    log.info("%s: %.1f s", name, phases[name])


def _set_precision(mixed: bool) -> None:
    if mixed and not tf.config.list_physical_devices("GPU"):
        log.warning("--mixed-precision on CPU: float16 runs but is slower than float32; it pays off on GPUs")
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")


def run_fn(fn_args) -> dict:
    """Trains and exports as described in the module docstring; returns the metrics dict.

    `fn_args` is our `FnArgs` or TFX's (same field names). Raises ValueError
    for bad arguments, TF_CONFIG, missing files, metadata that does not
    match the data, or a model_run_dir another run is writing (the chief
    holds `model_run_dir/.embedopt-lock` while it runs).
    """
    config = TrainerConfig.from_custom_config(getattr(fn_args, "custom_config", None))
    check_fn_args(fn_args)
    cluster = cluster_from_env()
    lock = (lock_inside(fn_args.model_run_dir, f"model_run_dir {fn_args.model_run_dir!r}") if cluster.is_chief
            else contextlib.nullcontext())
    try:
        with lock:
            return _run(fn_args, config, cluster)
    except LockedError as err:  # only taking the lock raises it
        raise ValueError(str(err)) from None


def _run(fn_args, config: TrainerConfig, cluster) -> dict:
    metadata_path = metadata_location(fn_args, config)
    train_files = _matching(fn_args.train_files)
    # Both missing: the data path is wrong, and that is the error to name.
    if not train_files and not tf.io.gfile.exists(metadata_path):
        raise _no_files_error("train_files", fn_args.train_files)
    metadata = load_metadata(metadata_path)
    _set_precision(config.mixed_precision)
    strategy = choose_strategy(config.strategy, cluster)
    # Reading the files runs TF ops, which MultiWorkerMirroredStrategy must come before.
    _check_train_split(train_files, fn_args.train_files, metadata, metadata_path)
    eval_note = _empty_eval_note(fn_args.eval_files, metadata, metadata_path)
    global_batch = config.batch_size
    if global_batch % strategy.num_replicas_in_sync:
        raise ValueError(f"batch_size {global_batch} must be a multiple of the {strategy.num_replicas_in_sync} replicas")
    is_chief = cluster.is_chief
    scratch = None if is_chief else tempfile.mkdtemp(prefix=f"embedopt-worker{cluster.task_index}-")
    run_dir = fn_args.model_run_dir if is_chief else scratch
    serving_dir = fn_args.serving_model_dir if is_chief else os.path.join(scratch, "serving")
    keras.utils.set_random_seed(config.seed)
    phases = {}
    phase_start = time.perf_counter()

    with strategy.scope():
        model = build_model(metadata, config)
        embedding_optimizer, dense_optimizer = build_optimizers(model, config, config.mixed_precision)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        state = TrainState(model, embedding_optimizer, dense_optimizer, step,
                           DynamicLossScale() if config.mixed_precision else None)
    checkpoint = state.checkpoint()
    row_sharded = config.table_sharding == "row"
    # Row sharding: every worker saves and restores its own shard; mirrored: the chief's checkpoint serves all.
    place = place_for(os.path.join(fn_args.model_run_dir, artifacts.CHECKPOINT_DIR), config.table_sharding, model)
    if is_chief or row_sharded:
        for path, size in artifacts.remove_checkpoint_temps(place.directory):
            log.info("removed %s (%.1f MB), left by a checkpoint save that was interrupted", path, size / 1e6)
    point = place.resume_point()
    latest = point.path if point else None
    if row_sharded and point and point.reshard_from:
        barrier(strategy)  # every worker has chosen its resume point before any writes a resharded one
        log.info("resharding the checkpoint of step %d from %d worker(s) onto %d", point.step, point.reshard_from,
                 place.num_shards)
        reshard(place, checkpoint, point)
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
    resumed_from = int(step.numpy())
    if resumed_from > fn_args.train_steps:
        raise ValueError(f"checkpoint {latest} is at step {resumed_from}, past train_steps={fn_args.train_steps}; "
                         "use a new model_run_dir or more steps")
    if resumed_from:
        log.info("resumed from checkpoint %s at step %d", latest, resumed_from)
    phases["build_and_restore"] = time.perf_counter() - phase_start
    ckpt_dir = place.directory if is_chief or row_sharded else os.path.join(scratch, artifacts.CHECKPOINT_DIR)
    manager = tf.train.CheckpointManager(checkpoint, ckpt_dir, max_to_keep=3)

    train_ds = _distributed_dataset(strategy, fn_args.train_files, metadata, global_batch, shuffle=True,
                                    seed=config.seed, skip_steps=resumed_from)
    eval_ds = (None if eval_note else
               _distributed_dataset(strategy, fn_args.eval_files, metadata, global_batch, shuffle=False, seed=None))
    train_step = make_train_step(strategy, state, global_batch)
    writer = (tf.summary.create_file_writer(os.path.join(run_dir, artifacts.LOGS_DIR, "train"))
              if is_chief else tf.summary.create_noop_writer())
    start = time.perf_counter()
    try:
        result = train(
            train_step, iter(train_ds), state, fn_args.train_steps, global_batch,
            checkpoint_every=config.checkpoint_every, save_checkpoint=lambda s: manager.save(checkpoint_number=s),
            # Off a terminal the bar's carriage returns would flood the log: log lines instead.
            log_every=config.log_every, progress=config.progress and is_chief and sys.stdout.isatty(), summary_writer=writer,
        )
    except tf.errors.InvalidArgumentError as err:
        raise ValueError(training_error(err.message, metadata_path)) from None
    train_seconds = phases["train"] = time.perf_counter() - start
    with _timed(phases, "final_checkpoint"):
        manager.save(checkpoint_number=int(step.numpy()))
    if eval_note:
        log.warning("%s", eval_note)
        metrics = dict(eval_auc=None, eval_log_loss=None, eval_examples=0, eval_positive_rate=None, eval_note=eval_note)
    else:
        with _timed(phases, "eval"):
            metrics = evaluate(strategy, model, iter(eval_ds), fn_args.eval_steps,
                               max_examples=metadata.row_counts.get("eval"))
    with _timed(phases, "export"):
        # Row sharding: the chief exports a copy with the tables gathered whole; the others only send their shards.
        export_model = whole_table_model(strategy, model, metadata, config, is_chief) if row_sharded else model
        if export_model is not None:
            export_saved_model(export_model, metadata, serving_dir,
                               metadata_path if os.path.isdir(metadata_path) else os.path.dirname(metadata_path))

    # The first step includes tracing; it is left out of the step time.
    timed = result.step_seconds[1:] or result.step_seconds
    mean_step = float(np.mean(timed)) if timed else float("nan")
    metrics.update(
        steps=int(step.numpy()),
        resumed_from_step=resumed_from,
        steps_this_run=result.steps_run,
        global_batch_size=global_batch,
        num_replicas=strategy.num_replicas_in_sync,
        num_workers=cluster.num_workers,
        strategy=("MultiWorkerMirroredStrategy" if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
                  else type(strategy).__name__),
        mean_step_seconds=mean_step,
        examples_per_second=global_batch / mean_step if timed else float("nan"),
        train_seconds=train_seconds,
        # Wall time of each phase of this run (the periodic checkpoints are inside "train").
        phase_seconds={k: round(v, 3) for k, v in phases.items()},
        final_train_loss=result.losses[-1][1] if result.losses else None,
        table_rows=[int(t.input_dim) for t in model.tables],
        table_sharding=config.table_sharding,
        embedding_rows_per_replica=rows_per_replica(strategy, model),
        # Per-variable sums (a sharded table's over all shards): equal on every worker when they stayed in sync.
        weights_checksum=weights_checksum(strategy, model),
        config=config.to_json(),
        serving_model_dir=fn_args.serving_model_dir,
        metadata_path=metadata_path,
    )
    if is_chief and not eval_note:
        with tf.summary.create_file_writer(os.path.join(run_dir, artifacts.LOGS_DIR, "eval")).as_default():
            artifacts.write_scalar("auc", metrics["eval_auc"], step=metrics["steps"])
            artifacts.write_scalar("log_loss", metrics["eval_log_loss"], step=metrics["steps"])
    if is_chief:
        points = artifacts.merged_losses(run_dir, result.losses)
        metrics["training_curve"] = artifacts.plot_curve(
            os.path.join(run_dir, artifacts.CURVE_FILE), points,
            f"{config.optimizer} embeddings / {config.dense_optimizer} dense")
        artifacts.write_json(os.path.join(run_dir, artifacts.METRICS_FILE), metrics)
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    return metrics
