"""The defaults of a run without `train_steps`: an automatic batch size and early stopping on the eval AUC.

Without `train_steps` the trainer runs in epochs of `steps_per_epoch`
steps (one pass over the train split, `ceil(train rows / batch)`),
evaluates the whole eval split after each, keeps the weights of the best
evaluation in a checkpoint of their own, and stops once the eval AUC has not
improved for `patience` evaluations in a row, or after `max_epochs` epochs.
The exported model is the best evaluation's.

Everything here is plain Python (no TensorFlow), so the CLI can use it
before TensorFlow is imported and the rules are tested as pure functions.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

# A pass over the train split should take at least this many steps: with fewer (the batch of 1024 on a few
# thousand rows) the model sees too few updates per pass to beat a logistic regression before it overfits.
MIN_STEPS_PER_EPOCH = 100
AUTO_BATCH_MIN = 32
AUTO_BATCH_MAX = 1024

DEFAULT_PATIENCE = 2
DEFAULT_MAX_EPOCHS = 20

HISTORY_FILE = "early_stopping.json"
BEST_CHECKPOINT_DIR = "best_checkpoint"

# Why a run stopped (metrics.json "stopping"."reason").
PATIENCE = "patience"
MAX_EPOCHS = "max_epochs"


def auto_batch_size(train_rows: int) -> int:
    """The largest power of two in [AUTO_BATCH_MIN, AUTO_BATCH_MAX] whose pass over `train_rows` takes at least
    MIN_STEPS_PER_EPOCH steps; AUTO_BATCH_MIN when even that gives fewer."""
    if train_rows < 0:
        raise ValueError(f"train_rows must be >= 0, got {train_rows}")
    batch = AUTO_BATCH_MAX
    while batch > AUTO_BATCH_MIN and train_rows / batch < MIN_STEPS_PER_EPOCH:
        batch //= 2
    return batch


def steps_per_epoch(train_rows: int, batch_size: int) -> int:
    """Steps of one pass over the train split (the last batch wraps around to the next pass), at least 1."""
    return max(1, math.ceil(train_rows / batch_size))


def best_index(aucs: list[float]) -> int | None:
    """Index of the best AUC; on a tie the earliest (a later equal AUC is not an improvement)."""
    best = None
    for i, auc in enumerate(aucs):
        if best is None or auc > aucs[best]:
            best = i
    return best


def stop_reason(aucs: list[float], patience: int, max_epochs: int) -> str | None:
    """Why training stops after the evaluations `aucs` (one per epoch, in order), or None to train on.

    PATIENCE once the last `patience` evaluations have not improved on the best before them; MAX_EPOCHS once
    `max_epochs` evaluations are done (patience wins when both hold).
    """
    if patience < 1 or max_epochs < 1:
        raise ValueError(f"patience and max_epochs must be >= 1, got {patience} and {max_epochs}")
    best = best_index(aucs)
    if best is not None and len(aucs) - 1 - best >= patience:
        return PATIENCE
    if len(aucs) >= max_epochs:
        return MAX_EPOCHS
    return None


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """One evaluation at the end of an epoch: the eval metrics of the weights at `step`."""

    epoch: int
    step: int
    metrics: dict  # eval_auc, eval_log_loss, eval_examples, eval_positive_rate

    @property
    def auc(self) -> float:
        return self.metrics["eval_auc"]

    def to_json(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, **self.metrics}


def load_history(run_dir: str, up_to_step: int) -> list[Evaluation]:
    """The evaluations a restarted run has already done: those of `run_dir`'s history up to its checkpoint's step.

    An evaluation is recorded after the checkpoint of its step is saved, so every recorded step up to
    `up_to_step` is one the restored weights went through; later ones (none, unless the checkpoints were
    replaced) are dropped.
    """
    path = os.path.join(run_dir, HISTORY_FILE)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        entries = json.load(f)["evaluations"]
    return [Evaluation(e.pop("epoch"), e.pop("step"), e) for e in entries if e["step"] <= up_to_step]


def history_json(history: list[Evaluation], patience: int, max_epochs: int, epoch_steps: int) -> dict:
    """What early_stopping.json and metrics.json's "stopping" hold."""
    best = best_index([e.auc for e in history])
    return {
        "patience": patience, "max_epochs": max_epochs, "steps_per_epoch": epoch_steps,
        "epochs": len(history), "reason": stop_reason([e.auc for e in history], patience, max_epochs),
        "best_epoch": None if best is None else history[best].epoch,
        "best_step": None if best is None else history[best].step,
        "evaluations": [e.to_json() for e in history],
    }
