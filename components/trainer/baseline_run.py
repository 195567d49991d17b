"""A run's baseline metrics: the hashed logistic regression (baseline.py) fitted on the train split (its l2 chosen
on a holdout of those rows), scored on the eval split the model was evaluated on, and the warning when the model
does not beat it.

The chief computes them after training, in NumPy (no collectives). Both splits are read in file order up to
MAX_ROWS rows each; on larger splits the baseline sees their first MAX_ROWS rows (`baseline_train_rows`,
`baseline_eval_rows` say how many).
"""

from __future__ import annotations

import logging
import time

from components.trainer import baseline
from components.trainer.inputs import split_arrays

log = logging.getLogger(__name__)

# Rows of each split the baseline reads: its four fits of the l2 grid take BASELINE_SECONDS_AT_MAX_ROWS on 2
# cores; more rows would cost more than training a small sample does.
MAX_ROWS = 100_000


def baseline_metrics(train_files, eval_files, metadata, eval_auc: float | None, early_stopping: bool = False,
                     max_rows: int = MAX_ROWS) -> dict:
    """metrics.json's baseline fields: baseline_auc, baseline_log_loss, positive_rate {train, eval},
    beats_baseline, baseline_warning (its advice depends on `early_stopping`), the rows used and the seconds."""
    start = time.perf_counter()
    ids, dense, labels, features = split_arrays(train_files, metadata, max_rows)
    fitted, l2, holdout_aucs = baseline.fit_tuned(ids, dense, labels, features=features)
    eval_ids, eval_dense, eval_labels, eval_features = split_arrays(eval_files, metadata, max_rows)
    probabilities = fitted.predict(eval_ids, eval_dense, eval_features)
    baseline_auc = baseline.auc(eval_labels, probabilities)
    beats = None if eval_auc is None or baseline_auc is None else bool(eval_auc > baseline_auc)
    warning = None
    if beats is False:
        advice = ("try --optimizer adagrad --learning-rate 0.05, other learning rates or a smaller --embedding-dim; "
                  "where a linear model explains the data, it may simply be the better model" if early_stopping
                  else "train without --train-steps (early stopping), or with a smaller --batch-size")
        warning = (f"the model's eval AUC {eval_auc:.4f} does not beat the baseline's {baseline_auc:.4f} (a hashed "
                   f"logistic regression on the same features and eval rows): {advice}")
        log.warning("%s", warning)
    return dict(
        baseline_auc=baseline_auc,
        baseline_log_loss=baseline.log_loss(eval_labels, probabilities),
        baseline_train_rows=int(len(labels)),
        baseline_eval_rows=int(len(eval_labels)),
        baseline_iterations=fitted.iterations,
        baseline_l2=l2,
        baseline_holdout_aucs={str(k): v for k, v in holdout_aucs.items()},
        baseline_seconds=round(time.perf_counter() - start, 3),
        positive_rate={"train": float(labels.mean()), "eval": float(eval_labels.mean())},
        beats_baseline=beats,
        baseline_warning=warning,
    )
