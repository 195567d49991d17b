"""The trainer's input: checks on the files and metadata before anything is built, and the distributed datasets.

An empty train split is refused; an empty eval split only skips the
evaluation (`empty_eval_note` says why). Reading the files runs TF ops, so
these checks run after the strategy is chosen.
"""

from __future__ import annotations

import tensorflow as tf

from components.preprocess.metadata import load_metadata
from components.preprocess.reader import make_dataset
from components.trainer.fn_args import TrainerConfig, example_pattern, metadata_location


def file_list(patterns) -> list[str]:
    return [patterns] if isinstance(patterns, str) else list(patterns)


def matching(patterns) -> list[str]:
    return sorted({f for p in file_list(patterns) for f in tf.io.gfile.glob(p)})


def _no_files_error(name: str, patterns) -> ValueError:
    return ValueError(f"{name}: no files match {file_list(patterns)!r}; expected the preprocess output, "
                      f"e.g. {example_pattern('train')}")


def _holds_records(files: list[str]) -> bool:
    """True when at least one of the (GZIP TFRecord) files holds a record; reads no further than that."""
    return bool(files) and any(True for _ in tf.data.TFRecordDataset(files, compression_type="GZIP").take(1))


def load_run_metadata(fn_args, config: TrainerConfig):
    """(metadata path, metadata, the files matching train_files); ValueError naming a wrong data path."""
    metadata_path = metadata_location(fn_args, config)
    train_files = matching(fn_args.train_files)
    # Both missing: the data path is wrong, and that is the error to name.
    if not train_files and not tf.io.gfile.exists(metadata_path):
        raise _no_files_error("train_files", fn_args.train_files)
    return metadata_path, load_metadata(metadata_path), train_files


def check_train_split(files: list[str], patterns, metadata, metadata_path: str) -> None:
    """Raises ValueError, before anything is built, when there is nothing to train on (`files` match `patterns`)."""
    rows = metadata.row_counts["train"]
    if rows and not files:
        raise _no_files_error("train_files", patterns)
    if not rows or not _holds_records(files):
        raise ValueError(f"the train split is empty: {metadata_path} has row_counts['train'] = {rows}, and the "
                         f"{len(files)} file(s) matching {file_list(patterns)!r} hold no record. Preprocess again with "
                         "an --eval-fraction below 1 (or more input), or pass other --train-files")


def empty_eval_note(patterns, metadata, metadata_path: str) -> str | None:
    """Why evaluation is skipped (an empty eval split), or None when there is something to evaluate.

    Raises ValueError when the metadata counts eval rows but no file matches
    `patterns` (a wrong path rather than an empty split).
    """
    files, rows = matching(patterns), metadata.row_counts["eval"]
    if rows and not files:
        raise _no_files_error("eval_files", patterns)
    if rows and _holds_records(files):
        return None
    return (f"the eval split is empty ({metadata_path} has row_counts['eval'] = {rows}; {len(files)} file(s) match "
            f"{file_list(patterns)!r}, holding no record): evaluation skipped, the model is exported without eval "
            "metrics. Preprocess with --eval-fraction > 0 to evaluate")


def distributed_dataset(strategy, patterns, metadata, global_batch, *, shuffle, seed, skip_steps=0):
    """Per-replica batches; `skip_steps` steps' worth are dropped first, so a resumed run reads on where the
    checkpointed one stopped (the input order is a function of the seed, see `make_dataset`)."""
    def dataset_fn(context: tf.distribute.InputContext):
        replicas_per_pipeline = context.num_replicas_in_sync // context.num_input_pipelines
        return make_dataset(file_list(patterns), metadata, context.get_per_replica_batch_size(global_batch),
                            shuffle=shuffle, num_epochs=None, input_context=context, seed=seed,
                            drop_remainder=True, skip_batches=skip_steps * replicas_per_pipeline)

    return strategy.distribute_datasets_from_function(dataset_fn)


def split_arrays(patterns, metadata, max_rows: int):
    """(ids [N, W] int64, dense [N, 13] float32, labels [N], features [W]) of the first `max_rows` rows of a
    non-empty split, in file order (what the model reads, for the baseline).

    A one-hot feature is one column; a multi-hot (bag) feature as many as its longest bag, padded with -1.
    `features[j]` is column j's index in `metadata.categorical_keys`.
    """
    import numpy as np

    keys = list(metadata.categorical_keys)
    bags = set(getattr(metadata, "multi_hot_keys", None) or ())
    dataset = make_dataset(file_list(patterns), metadata, 4096, shuffle=False, num_epochs=1).unbatch().take(max_rows)
    columns = {k: [] for k in keys}
    dense, labels = [], []
    for features, label in dataset.batch(65_536):
        for k in keys:
            value = features[k]
            columns[k].append(value.to_tensor(default_value=-1).numpy() if k in bags
                              else value.numpy().reshape(-1, 1))
        dense.append(features[metadata.dense_key].numpy())
        labels.append(label.numpy().reshape(-1))
    blocks, owners = [], []
    for f, k in enumerate(keys):
        width = max(1, max(part.shape[1] for part in columns[k]))
        blocks.append(np.concatenate([np.pad(part, ((0, 0), (0, width - part.shape[1])), constant_values=-1)
                                      for part in columns[k]]))
        owners.extend([f] * width)
    return np.concatenate(blocks, axis=1), np.concatenate(dense), np.concatenate(labels), np.array(owners)
