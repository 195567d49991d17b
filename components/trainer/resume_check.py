"""What a run directory's checkpoints hold, recorded beside them, and the check a restart makes against it.

`model_run_dir/run_record.json` (artifacts.RUN_RECORD_FILE), written by the
chief before training:

  model        the TrainerConfig fields that give the checkpoint's variables
               their shapes and their slots their meaning (STRUCTURE)
  settings     the other TrainerConfig fields, and each optimizer's
               `get_config()` (hyper-parameters)
  id_mapping   how raw values became ids: vocabulary sizes, hash buckets,
               bag features, and the sha256 of each vocabulary file
  data_sources every preprocess output trained on, with the step it began at

A restart that finds a checkpoint refuses a change in `model` or in
`id_mapping` (the checkpoint would be meaningless: other shapes, slots of
another optimizer, rows that stand for other values), naming the flag, both
values and how to start fresh. Changed `settings` (a learning rate, the
batch size) and new data with the same id mapping (the next day's logs) are
allowed, each said in one log line; the data source is added to
`data_sources`, which metrics.json repeats. A run directory written before
this record existed resumes, with a log line saying that it could not be
checked (checkpoint_slots.py still checks its optimizer slots).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import tensorflow as tf

from components.trainer import artifacts

log = logging.getLogger(__name__)

RECORD_VERSION = 1
# TrainerConfig fields a checkpoint is tied to: variable shapes (dims, widths, layout), slot meaning (optimizers),
# or what the checkpoint contains (the loss scale of mixed precision). Not `table_sharding`: a checkpoint of one
# table plan reshards onto another (components/trainer/reshard.py).
STRUCTURE = ("optimizer", "dense_optimizer", "embedding_dim", "table_layout", "interaction",
             "bottom_mlp", "top_mlp", "wide", "cross_layers", "cross_rank", "mixed_precision", "table_kind",
             "table_capacity", "admit_after", "eviction", "default_row")
# Fields that shape variables only under one interaction.
_ONLY_WITH = {"cross_layers": ("interaction", "dcnv2"), "cross_rank": ("interaction", "dcnv2")}
# How the CLI spells a field when it is not "--" + the field with dashes.
_FLAGS = {"wide": "--no-wide", "metadata_path": "--metadata"}
# Settings that say nothing about the training itself and change freely between segments of one run.
_QUIET_SETTINGS = ("progress", "log_every", "metadata_path", "strategy")


def flag(field: str) -> str:
    return _FLAGS.get(field, "--" + field.replace("_", "-"))


def _preprocess_dir(metadata_path: str) -> str:
    return metadata_path if tf.io.gfile.isdir(metadata_path) else os.path.dirname(metadata_path)


def _sha256(path: str) -> str | None:
    if not tf.io.gfile.exists(path):
        return None
    digest = hashlib.sha256()
    with tf.io.gfile.GFile(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def id_mapping(metadata, metadata_path: str) -> dict:
    """How raw values map to ids for `metadata`: equal for two preprocess outputs exactly when an id means the
    same value in both."""
    from components.preprocess.metadata import vocab_file

    hash_buckets = (metadata.options or {}).get("hash_buckets")
    mapping = {"vocab_sizes": dict(metadata.vocab_sizes), "hash_buckets": hash_buckets,
               "multi_hot_keys": list(metadata.multi_hot_keys)}
    if not hash_buckets:
        folder = _preprocess_dir(metadata_path)
        mapping["vocab_sha256"] = {key: _sha256(vocab_file(folder, key)) for key in metadata.categorical_keys}
    return mapping


def data_source(metadata, metadata_path: str, from_step: int) -> dict:
    path = metadata_path if "://" in metadata_path else os.path.abspath(metadata_path)
    file = path if not tf.io.gfile.isdir(path) else os.path.join(path, "metadata.json")
    return {"metadata_path": path, "input_pattern": metadata.input_pattern, "row_counts": dict(metadata.row_counts),
            "metadata_sha256": _sha256(file), "from_step": from_step}


def make_record(config, metadata, metadata_path: str, embedding_optimizer, dense_optimizer) -> dict:
    values = config.to_json()
    return {
        "version": RECORD_VERSION,
        "model": {k: values[k] for k in STRUCTURE if k in values},
        "settings": {**{k: v for k, v in values.items() if k not in STRUCTURE and k not in _QUIET_SETTINGS},
                     "embedding_optimizer_config": _plain(embedding_optimizer.get_config()),
                     "dense_optimizer_config": _plain(dense_optimizer.get_config())},
        "id_mapping": id_mapping(metadata, metadata_path),
    }


def _plain(value):
    """`value` as JSON holds it (tuples become lists, schedules their repr), so a read-back record compares equal."""
    return json.loads(json.dumps(value, default=repr))


def _read(run_dir: str) -> dict | None:
    path = os.path.join(run_dir, artifacts.RUN_RECORD_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path, "r") as f:
        return json.load(f)


def _structure_changes(old: dict, new: dict) -> list[str]:
    changes = []
    for field in STRUCTURE:
        if field not in old or field not in new or old[field] == new[field]:
            continue
        needs = _ONLY_WITH.get(field)
        if needs and old.get(needs[0]) != needs[1] and new.get(needs[0]) != needs[1]:
            continue
        changes.append(f"{flag(field)} (custom_config {field!r}): the checkpoints were written with "
                       f"{old[field]!r}, this run asks for {new[field]!r}")
    return changes


def _mapping_changes(old: dict, new: dict) -> list[str]:
    changes = []
    for key in ("hash_buckets", "multi_hot_keys"):
        if old.get(key) != new.get(key):
            changes.append(f"{key} {old.get(key)!r} -> {new.get(key)!r}")
    for key in sorted(set(old.get("vocab_sizes", {})) | set(new.get("vocab_sizes", {}))):
        a, b = old.get("vocab_sizes", {}).get(key), new.get("vocab_sizes", {}).get(key)
        if a != b:
            changes.append(f"{key}: {a} ids -> {b}")
    old_files, new_files = old.get("vocab_sha256") or {}, new.get("vocab_sha256") or {}
    differ = [k for k in sorted(set(old_files) | set(new_files)) if old_files.get(k) != new_files.get(k)]
    if differ and not changes:
        changes.append(f"the vocabulary files of {', '.join(differ[:5])}{' ...' if len(differ) > 5 else ''} differ "
                       "(an id stands for another value)")
    return changes


def check_resume(run_dir: str, record: dict, source: dict, has_checkpoint: bool, step: int) -> list[dict]:
    """Checks `record` against the one in `run_dir` when a checkpoint is there to resume; returns every data
    source trained on (this one last). Raises ValueError when the checkpoint does not fit this run."""
    old = _read(run_dir) if has_checkpoint else None
    sources = [source]
    if has_checkpoint and old is None:
        log.warning("%s has checkpoints but no %s (written before embedopt recorded them): could not check that "
                    "they were trained with this model, optimizer and id mapping; resuming as asked",
                    run_dir, artifacts.RUN_RECORD_FILE)
    elif old is not None:
        start_fresh = (f"to start fresh, use another --model-run-dir (or --output), or delete {run_dir}")
        changes = _structure_changes(old.get("model", {}), record["model"])
        if changes:
            raise ValueError(f"cannot resume {run_dir} at step {step}: " + "; ".join(changes)
                             + f". Run with the checkpoints' values to resume, or {start_fresh}")
        mapping = _mapping_changes(old.get("id_mapping", {}), record["id_mapping"])
        if mapping:
            raise ValueError(f"cannot resume {run_dir} at step {step} on --data {source['metadata_path']}: its ids "
                             f"mean other values than the checkpoint's ({'; '.join(mapping)}). Train on data "
                             f"preprocessed with the same vocabulary or hash buckets, or {start_fresh}")
        settings = [f"{k} {old['settings'].get(k)!r} -> {v!r}" for k, v in record["settings"].items()
                    if k in old.get("settings", {}) and old["settings"][k] != v]
        if settings:
            log.info("resuming with changed settings: %s", "; ".join(settings))
        sources = list(old.get("data_sources", []))
        last = sources[-1] if sources else {}
        same = ("metadata_path", "input_pattern", "row_counts", "metadata_sha256")
        if any(last.get(k) != source.get(k) for k in same):
            log.info("training on new data with the same id mapping from step %d: %s (before: %s); metrics.json "
                     "lists every data source", step, source["input_pattern"], last.get("input_pattern", "unknown"))
            sources.append(source)
    return sources


def write_record(run_dir: str, record: dict, sources: list[dict]) -> None:
    """Records what the run's checkpoints hold; call it once the checkpoint (if any) is restored, so that a
    refused restart never leaves its own values behind as the checkpoints'."""
    artifacts.write_json(os.path.join(run_dir, artifacts.RUN_RECORD_FILE), {**record, "data_sources": sources})
