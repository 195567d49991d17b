"""Issue 18 item 5: without train_steps, epochs with early stopping on the eval AUC; the automatic batch size.

The rules are checked as pure functions against independent references; one run on the planted data
checks that the exported model is the best evaluation's (its AUC, computed here from the SavedModel's
scores, is the best one, and not the last one, which patience makes worse than the best).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from components.preprocess.metadata import ExamplesLayout
from components.trainer import early_stopping as es
from components.trainer.run import run_fn
from tests.components.trainer.helpers import rank_auc, serialized_examples
from tests.components.trainer.test_reliability import tiny_raw, with_an_empty_split  # noqa: F401 (fixture)
from tests.components.trainer.test_run_fn import make_fn_args


def reference_stop(aucs, patience, max_epochs):
    """Counts the evaluations since the last strict improvement, one at a time."""
    best, since = -math.inf, 0
    for auc in aucs:
        if auc > best:
            best, since = auc, 0
        else:
            since += 1
    if aucs and since >= patience:
        return es.PATIENCE
    return es.MAX_EPOCHS if len(aucs) >= max_epochs else None


@pytest.mark.parametrize("aucs, patience, max_epochs, expected", [
    ([], 2, 20, None),
    ([0.6], 1, 20, None),
    ([0.6, 0.6], 1, 20, es.PATIENCE),  # an equal AUC is no improvement
    ([0.6, 0.7, 0.65], 2, 20, None),
    ([0.6, 0.7, 0.65, 0.69], 2, 20, es.PATIENCE),
    ([0.6, 0.7, 0.65, 0.71], 2, 20, None),  # improved on the best: the count starts again
    ([0.6, 0.7, 0.65, 0.71, 0.70], 2, 20, None),
    ([0.5, 0.6, 0.7], 2, 3, es.MAX_EPOCHS),
    ([0.7, 0.6, 0.5], 2, 3, es.PATIENCE),  # both hold: patience is the reason
])
def test_stop_reason_counts_patience_from_the_best(aucs, patience, max_epochs, expected):
    assert es.stop_reason(aucs, patience, max_epochs) == expected
    assert reference_stop(aucs, patience, max_epochs) == expected


def test_stop_reason_matches_the_reference_on_random_histories():
    rng = np.random.default_rng(0)
    for _ in range(500):
        aucs = list(np.round(rng.uniform(0.6, 0.7, rng.integers(0, 12)), 2))  # rounding makes ties
        patience, max_epochs = int(rng.integers(1, 4)), int(rng.integers(1, 12))
        assert es.stop_reason(aucs, patience, max_epochs) == reference_stop(aucs, patience, max_epochs), aucs


def test_best_index_takes_the_earliest_of_equal_aucs():
    assert es.best_index([0.6, 0.7, 0.7, 0.65]) == 1
    assert es.best_index([]) is None


@pytest.mark.parametrize("rows, expected", [
    (0, 32), (4_500, 32), (6_399, 32), (6_400, 64), (12_799, 64), (12_800, 128), (50_000, 256), (102_399, 512),
    (102_400, 1024),
    (45_000_000, 1024),
])
def test_auto_batch_size_rule(rows, expected):
    assert es.auto_batch_size(rows) == expected


def test_auto_batch_size_is_the_largest_power_of_two_with_enough_steps():
    for rows in np.unique(np.geomspace(1, 10**7, 300).astype(int)):
        batch = es.auto_batch_size(int(rows))
        assert batch in (32, 64, 128, 256, 512, 1024)
        assert batch == 32 or rows / batch >= es.MIN_STEPS_PER_EPOCH
        assert batch == 1024 or rows / (2 * batch) < es.MIN_STEPS_PER_EPOCH


def test_history_of_a_restarted_run_stops_at_its_checkpoint(tmp_path):
    history = [es.Evaluation(e, 10 * e, {"eval_auc": 0.6 + e / 100}) for e in (1, 2, 3)]
    with open(tmp_path / es.HISTORY_FILE, "w", encoding="utf-8") as f:
        json.dump(es.history_json(history, 2, 20, 10), f)
    assert es.load_history(str(tmp_path), up_to_step=25) == history[:2]
    assert es.load_history(str(tmp_path), up_to_step=30) == history
    assert es.load_history(str(tmp_path / "none"), up_to_step=30) == []


# An embedding learning rate that overfits the planted data within a few passes, so patience stops the run.
OVERFIT = dict(learning_rate=0.05, dense_learning_rate=0.01, patience=2, max_epochs=8, checkpoint_every=1000)


@pytest.fixture(scope="module")
def early_stopped(planted_data, tmp_path_factory):
    fn_args = make_fn_args(planted_data, str(tmp_path_factory.mktemp("early")), steps=None, **OVERFIT)
    return fn_args, run_fn(fn_args)


def test_early_stopping_exports_the_best_evaluations_weights(early_stopped, planted_data):
    fn_args, metrics = early_stopped
    stopping = metrics["stopping"]
    aucs = [e["eval_auc"] for e in stopping["evaluations"]]
    assert stopping["mode"] == "early_stopping" and stopping["reason"] == es.PATIENCE
    best = int(np.argmax(aucs))
    assert stopping["best_epoch"] == best + 1 and len(aucs) == best + 3  # patience 2: two evaluations after the best
    epoch_steps = math.ceil(ExamplesLayout(planted_data).row_counts["train"] / 256)
    assert stopping["steps_per_epoch"] == epoch_steps and metrics["steps"] == len(aucs) * epoch_steps
    # The last evaluation is clearly worse than the best, so exporting the last weights would show here.
    assert aucs[best] - aucs[-1] > 5e-3, aucs
    records, labels = serialized_examples(ExamplesLayout(planted_data).eval_pattern)
    serve = tf.saved_model.load(fn_args.serving_model_dir).signatures["serve_transformed"]
    exported_auc = rank_auc(labels, serve(examples=tf.constant(records))["probabilities"].numpy()[:, 0])
    assert abs(exported_auc - aucs[best]) < 2e-3 and metrics["eval_auc"] == aucs[best]
    best_dir = os.path.join(fn_args.model_run_dir, es.BEST_CHECKPOINT_DIR)
    assert tf.train.latest_checkpoint(best_dir).endswith(f"ckpt-{stopping['best_step']}")


def test_metrics_json_has_the_stopping_history_and_the_baseline(early_stopped):
    fn_args, metrics = early_stopped
    with open(os.path.join(fn_args.model_run_dir, "metrics.json"), encoding="utf-8") as f:
        written = json.load(f)
    assert written["stopping"] == metrics["stopping"]
    with open(os.path.join(fn_args.model_run_dir, es.HISTORY_FILE), encoding="utf-8") as f:
        assert json.load(f)["evaluations"] == metrics["stopping"]["evaluations"]
    assert 0.5 < written["baseline_auc"] < 1 and written["beats_baseline"] == (written["eval_auc"] > written["baseline_auc"])
    assert written["positive_rate"]["eval"] == pytest.approx(written["eval_positive_rate"])


def test_restart_after_early_stop_trains_nothing_and_exports_the_best_again(early_stopped):
    fn_args, metrics = early_stopped
    again = run_fn(fn_args)
    assert again["steps_this_run"] == 0 and again["steps"] == metrics["steps"]
    assert again["stopping"] == metrics["stopping"] and again["eval_auc"] == metrics["eval_auc"]
    assert again["weights_checksum"] == metrics["weights_checksum"]


def test_no_eval_split_without_train_steps_trains_one_pass(tiny_raw, tmp_path):  # noqa: F811
    fn_args = with_an_empty_split(tiny_raw, tmp_path, "eval", "no_split_folder")
    fn_args.train_steps = None
    metrics = run_fn(fn_args)
    train_rows = ExamplesLayout(os.path.dirname(fn_args.schema_path)).row_counts["train"]
    assert metrics["steps"] == math.ceil(train_rows / 64)
    assert metrics["stopping"]["mode"] == "one_pass" and metrics["eval_auc"] is None
    assert "baseline_auc" not in metrics
    assert os.path.exists(os.path.join(fn_args.serving_model_dir, "saved_model.pb"))


@pytest.mark.parametrize("train_rows, argv, batch", [
    (4_500, [], 32), (50_000, [], 256), (4_500, ["--train-steps", "5"], 1024), (4_500, ["--batch-size", "100"], 100),
])
def test_the_cli_picks_the_batch_size_without_train_steps_and_batch_size(tmp_path, train_rows, argv, batch):
    from components.preprocess import metadata as md
    from components.trainer import cli

    meta = md.Metadata(vocab_sizes={k: 5 for k in md.CATEGORICAL_KEYS}, row_counts={"train": train_rows, "eval": 500},
                       dead_letter_count=0, input_pattern="x", format="tsv", options={})
    md.write_metadata(meta, str(tmp_path))
    args = cli.build_parser().parse_args(["--data", str(tmp_path), "--output", "/o", *argv])
    fn_args = cli.fn_args_from_args(args)
    assert fn_args.custom_config["batch_size"] == batch and fn_args.eval_steps == math.ceil(500 / batch)
    assert fn_args.train_steps == (5 if "--train-steps" in argv else None)
    assert cli.uses_auto_batch(args) == (not argv)
