"""What a run leaves in `model_run_dir`: metrics.json, the training curve PNG, TensorBoard logs.

Layout:
  model_run_dir/metrics.json          eval AUC, log loss, examples/s, step time, steps, phase_seconds, ...
  model_run_dir/training_curve.png    loss against step (needs matplotlib; skipped with a warning without it)
  model_run_dir/logs/train/           TensorBoard scalars: loss, examples_per_second
  model_run_dir/logs/eval/            TensorBoard scalars: auc, log_loss
  model_run_dir/checkpoints/          tf.train.CheckpointManager checkpoints (resume point); a save
                                      writes into PREFIX_temp/ first: a failed save (disk full) removes it
                                      at once, one a kill interrupted is removed by the next run
  model_run_dir/run_record.json       what the checkpoints hold (model, optimizers, id mapping) and every
                                      data source trained on; a restart checks it (resume_check.py)
  model_run_dir/losses.json           (step, loss) points of every run segment, for the curve
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os

METRICS_FILE = "metrics.json"
CURVE_FILE = "training_curve.png"
LOSSES_FILE = "losses.json"
RUN_RECORD_FILE = "run_record.json"
LOGS_DIR = "logs"
CHECKPOINT_DIR = "checkpoints"
# TensorFlow's sharded save writes PREFIX_temp/part-* and merges it into PREFIX.* when complete.
CHECKPOINT_TEMP_PATTERN = "*_temp*"


def write_json(path: str, data) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
    return path


def remove_checkpoint_temps(ckpt_dir: str) -> list[tuple[str, int]]:
    """Deletes the PREFIX_temp folders that interrupted saves left in `ckpt_dir`; returns (path, bytes) of each.

    Call it only while no save can be running (before training, on the
    chief): a complete save has already merged and removed its temp folder,
    so any found then is a leftover, never read by a restore.
    """
    import tensorflow as tf

    if not tf.io.gfile.isdir(ckpt_dir):
        return []
    removed = []
    for name in sorted(tf.io.gfile.listdir(ckpt_dir)):
        path = os.path.join(ckpt_dir, name.rstrip("/"))
        if fnmatch.fnmatch(name.rstrip("/"), CHECKPOINT_TEMP_PATTERN) and tf.io.gfile.isdir(path):
            size = sum(tf.io.gfile.stat(os.path.join(root, f)).length
                       for root, _, files in tf.io.gfile.walk(path) for f in files)
            tf.io.gfile.rmtree(path)
            removed.append((path, size))
    return removed


def save_checkpoint(manager, checkpoint_number: int) -> str:
    """`manager.save(checkpoint_number=...)`; a save that fails (a full disk) deletes its PREFIX_temp folder
    before the error goes on, so a failed save never keeps holding the space it took."""
    from components.failure import note_path

    try:
        return manager.save(checkpoint_number=checkpoint_number)
    except BaseException as err:
        # Saves run one at a time in a process, so the only temp folder now is this save's.
        for path, size in remove_checkpoint_temps(manager.directory):
            logging.getLogger(__name__).warning("removed %s (%.1f MB), left by the failed checkpoint save", path,
                                                size / 1e6)
        raise note_path(err, manager.directory)


def merged_losses(run_dir: str, new_points: list[tuple[int, float]]) -> list[list[float]]:
    """Earlier segments' points (before a restart) up to the first new step, then the new ones."""
    path = os.path.join(run_dir, LOSSES_FILE)
    old = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
    first_new = new_points[0][0] if new_points else float("inf")
    points = [p for p in old if p[0] < first_new] + [list(p) for p in new_points]
    write_json(path, points)
    return points


def plot_curve(path: str, points, title: str) -> str | None:
    """Writes a PNG of loss against step; returns None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logging.warning("matplotlib is not installed; no training curve PNG (pip install '.[plot]' from the repository root)")
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    if points:
        steps, losses = zip(*points)
        ax.plot(steps, losses, marker=".")
    ax.set_xlabel("step")
    ax.set_ylabel("training log loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_scalar(name: str, value: float, step: int) -> None:
    """A TensorBoard scalar in the current default writer.

    `tf.summary.scalar` lives in the `tensorboard` package, which TensorFlow
    2.21 does not install; `tf.summary.write` with the scalars plugin's
    metadata writes the same event without it.
    """
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2

    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = "scalars"
    tf.summary.write(name, tf.constant(value, tf.float32), step=step, metadata=metadata)
