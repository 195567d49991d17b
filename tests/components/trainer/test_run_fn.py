"""run_fn end to end on the planted data: SavedModel, metrics.json, curve, logs, quality."""

from __future__ import annotations

import glob
import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from components.preprocess.metadata import ExamplesLayout
from components.trainer.fn_args import FnArgs
from components.trainer.run import run_fn
from tests.components.trainer.conftest import bayes_auc
from tests.components.trainer.helpers import log_loss, rank_auc, serialized_examples

BATCH = 256
STEPS = 80


def make_fn_args(data_dir, out_dir, steps=STEPS, **config) -> FnArgs:
    """FnArgs as TFX would hand them over (custom_config holding only what differs from the defaults)."""
    layout = ExamplesLayout(data_dir)
    eval_rows = layout.row_counts["eval"]
    custom = dict(batch_size=BATCH, learning_rate=0.003, dense_learning_rate=0.003, checkpoint_every=30,
                  log_every=20, progress=False)
    custom.update(config)
    return FnArgs(
        train_files=[layout.train_pattern],
        eval_files=[layout.eval_pattern],
        train_steps=steps,
        eval_steps=math.ceil(eval_rows / BATCH),
        serving_model_dir=os.path.join(out_dir, "serving"),
        model_run_dir=os.path.join(out_dir, "run"),
        schema_path=layout.metadata_path,
        custom_config=custom,
    )


@pytest.fixture(scope="module")
def trained(planted_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    fn_args = make_fn_args(planted_data, str(out))
    metrics = run_fn(fn_args)
    return fn_args, metrics


def test_saved_model_scores_preprocessed_examples(trained, planted_data):
    fn_args, metrics = trained
    records, labels = serialized_examples(ExamplesLayout(planted_data).eval_pattern)
    loaded = tf.saved_model.load(fn_args.serving_model_dir)
    serve = loaded.signatures["serve_transformed"]
    probs = serve(examples=tf.constant(records))["probabilities"].numpy()
    assert probs.shape == (len(records), 1) and probs.dtype == np.float32
    assert np.all((probs > 0) & (probs < 1))
    # The exported model is the evaluated one, and the evaluation saw each eval row once
    # (the last batch's wrapped-around rows are cut off): its AUC computed here with rank
    # statistics matches metrics.json up to the 10,001-threshold binning of keras's AUC.
    assert metrics["eval_examples"] == len(records)
    assert abs(rank_auc(labels, probs[:, 0]) - metrics["eval_auc"]) < 2e-3


def test_saved_model_scores_the_raw_logs_as_the_preprocess_encoded_them(trained, planted_data):
    fn_args, _ = trained
    layout = ExamplesLayout(planted_data)
    assert layout.metadata().dead_letter_count == 0
    # conftest's layout: the synthetic TSV in ROOT/raw, the preprocess output in ROOT/data.
    with open(os.path.join(os.path.dirname(planted_data), "raw", "data.tsv"), "rb") as f:
        lines = f.read().splitlines()
    records = [r for pattern in (layout.train_pattern, layout.eval_pattern) for r in serialized_examples(pattern)[0]]
    signatures = tf.saved_model.load(fn_args.serving_model_dir).signatures
    raw = signatures["serve_tsv"](lines=tf.constant(lines))["probabilities"].numpy()[:, 0]
    transformed = signatures["serve_transformed"](examples=tf.constant(records))["probabilities"].numpy()[:, 0]
    # Every raw row is one preprocessed example, in another order: the sorted scores agree (1e-6, the
    # signatures' agreement) when serving encodes each row exactly as the preprocess did.
    assert len(lines) == len(records)
    np.testing.assert_allclose(np.sort(raw), np.sort(transformed), rtol=0, atol=1e-6)


def test_metrics_json_and_artifacts_written(trained):
    fn_args, metrics = trained
    with open(os.path.join(fn_args.model_run_dir, "metrics.json"), encoding="utf-8") as f:
        saved = json.load(f)
    assert saved["steps"] == STEPS and saved["resumed_from_step"] == 0
    assert 0.5 < saved["eval_auc"] <= 1.0
    assert 0.0 < saved["eval_log_loss"] < 1.0
    assert saved["examples_per_second"] > 0 and saved["mean_step_seconds"] > 0
    assert saved["examples_per_second"] == pytest.approx(BATCH / saved["mean_step_seconds"])
    assert fn_args.eval_steps * BATCH - BATCH < saved["eval_examples"] <= fn_args.eval_steps * BATCH
    assert os.path.getsize(os.path.join(fn_args.model_run_dir, "training_curve.png")) > 1000
    assert glob.glob(os.path.join(fn_args.model_run_dir, "logs", "train", "events.out.tfevents.*"))
    assert glob.glob(os.path.join(fn_args.model_run_dir, "logs", "eval", "events.out.tfevents.*"))
    assert tf.train.latest_checkpoint(os.path.join(fn_args.model_run_dir, "checkpoints")).endswith(f"-{STEPS}")


def test_learned_model_beats_trivial_baseline(trained, planted_data):
    fn_args, _ = trained
    layout = ExamplesLayout(planted_data)
    records, labels = serialized_examples(layout.eval_pattern)
    probs = tf.saved_model.load(fn_args.serving_model_dir).signatures["serve_transformed"](
        examples=tf.constant(records))["probabilities"].numpy()[:, 0]
    # Trivial baseline: predict the training positive rate for everyone (AUC 0.5).
    train_labels = serialized_examples(layout.train_pattern)[1]
    base_rate = train_labels.mean()
    baseline_loss = log_loss(labels, np.full_like(labels, base_rate))
    best = bayes_auc(planted_data)
    auc = rank_auc(labels, probs)
    # "Wide margin": at least 70% of the way from chance to the Bayes-optimal AUC,
    # and a log loss at least 10% below the baseline's.
    assert auc > 0.5 + 0.7 * (best - 0.5), (auc, best)
    assert log_loss(labels, probs) < 0.9 * baseline_loss


def test_restart_after_finish_is_a_no_op_with_exact_steps(trained):
    fn_args, _ = trained
    metrics = run_fn(fn_args)
    assert metrics["steps"] == STEPS and metrics["resumed_from_step"] == STEPS and metrics["steps_this_run"] == 0


@pytest.mark.parametrize("layout,interaction", [("shared", "concat"), ("per_feature", "dot")])
def test_layouts_and_mixed_precision_train(planted_data, tmp_path, layout, interaction):
    mixed = layout == "shared"
    metrics = run_fn(make_fn_args(planted_data, str(tmp_path), steps=30, table_layout=layout,
                                  interaction=interaction, mixed_precision=mixed, optimizer="rowwise_adagrad",
                                  learning_rate=0.1))
    try:
        assert metrics["steps"] == 30
        assert np.isfinite(metrics["eval_log_loss"]) and metrics["eval_auc"] > 0.55
        sizes = list(ExamplesLayout(planted_data).metadata().vocab_sizes.values())
        assert metrics["table_rows"] == ([sum(sizes)] if layout == "shared" else metrics["table_rows"])
        assert len(metrics["table_rows"]) == (1 if layout == "shared" else 26)
    finally:
        import keras

        keras.mixed_precision.set_global_policy("float32")
