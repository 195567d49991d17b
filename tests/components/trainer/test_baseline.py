"""Issue 18 item 5: the hashed logistic regression baseline, against independent NumPy references.

References: Newton's method on the explicit one-hot design matrix (the objective's exact optimum), the
rank AUC of helpers.py, the Bayes AUC of a known logistic truth, and the eval rows read with plain
TFRecord I/O.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from components.preprocess.metadata import ExamplesLayout
from components.trainer import baseline, cli
from components.trainer.baseline_run import baseline_metrics
from tests.components.trainer.helpers import rank_auc, serialized_examples


def planted(rows: int, features: int, vocab: int, seed: int):
    """ids, dense, labels and the true logits of a logistic truth in those features."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=(rows, features))
    dense = np.log1p(rng.exponential(3.0, size=(rows, 3)))
    weights, dense_weights = rng.normal(0, 0.6, (features, vocab)), rng.normal(0, 0.5, 3)
    logits = -1.0 + weights[np.arange(features), ids].sum(axis=1) + (dense - 1.3) @ dense_weights
    labels = (rng.random(rows) < 1 / (1 + np.exp(-logits))).astype(np.float64)
    return ids, dense, labels, logits


def design(ids, dense, columns, mean, scale):
    """[bias, standardised dense, one-hot of each (feature, id) in `columns`] as a dense matrix."""
    one_hot = np.zeros((len(ids), len(columns)))
    for row, values in enumerate(ids):
        for feature, value in enumerate(values):
            if (feature, value) in columns:
                one_hot[row, columns[(feature, value)]] = 1.0
    return np.hstack([np.ones((len(ids), 1)), (dense - mean) / scale, one_hot])


def newton_reference(ids, dense, labels, l2):
    """The exact optimum of sum(log loss) + l2/2 |w|^2 (bias unpenalised), by Newton's method."""
    columns = {pair: i for i, pair in enumerate(sorted({(f, v) for row in ids for f, v in enumerate(row)}))}
    mean, scale = dense.mean(axis=0), dense.std(axis=0)
    x = design(ids, dense, columns, mean, scale)
    penalty = np.full(x.shape[1], l2)
    penalty[0] = 0.0
    w = np.zeros(x.shape[1])
    for _ in range(50):
        p = 1 / (1 + np.exp(-x @ w))
        grad = x.T @ (p - labels) + penalty * w
        hessian = x.T @ (x * (p * (1 - p))[:, None]) + np.diag(penalty)
        w -= np.linalg.solve(hessian, grad)
    return lambda i, d: 1 / (1 + np.exp(-design(i, d, columns, mean, scale) @ w))


@pytest.mark.parametrize("l2", [1.0, 0.1])
def test_fit_reaches_the_objectives_optimum(l2):
    ids, dense, labels, _ = planted(400, 3, 8, seed=1)
    fitted = baseline.fit(ids, dense, labels, l2=l2)
    reference = newton_reference(ids, dense, labels, l2)
    test_ids, test_dense, _, _ = planted(200, 3, 10, seed=2)  # ids 8 and 9 never seen in training
    # Tolerance: the L-BFGS stopping rule leaves a gradient of ~1e-6 x the loss; predictions agree far closer.
    np.testing.assert_allclose(fitted.predict(ids, dense), reference(ids, dense), atol=1e-4)
    np.testing.assert_allclose(fitted.predict(test_ids, test_dense), reference(test_ids, test_dense), atol=1e-4)


def test_unseen_ids_score_with_weight_zero():
    ids, dense, labels, _ = planted(300, 2, 5, seed=3)
    fitted = baseline.fit(ids, dense, labels)
    seen, unseen = ids[:4].copy(), ids[:4].copy()
    unseen[:, 1] = 77
    expected = fitted.logits(seen, dense[:4]) - fitted.categorical[np.searchsorted(fitted.keys, (1 << 40) + seen[:, 1])]
    np.testing.assert_allclose(fitted.logits(unseen, dense[:4]), expected, atol=1e-12)


def test_a_warm_start_reaches_the_same_optimum():
    ids, dense, labels, _ = planted(400, 3, 8, seed=1)
    cold = baseline.fit(ids, dense, labels, l2=0.3)
    warm = baseline.fit(ids, dense, labels, l2=0.3, start=baseline.fit(ids, dense, labels, l2=30.0))
    np.testing.assert_allclose(warm.predict(ids, dense), cold.predict(ids, dense), atol=1e-4)


def test_fit_tuned_keeps_the_l2_with_the_best_holdout_auc():
    # Many values seen a few times: weak l2 overfits them, strong l2 underfits the frequent ones.
    ids, dense, labels, _ = planted(3000, 4, 300, seed=6)
    fitted, chosen, aucs = baseline.fit_tuned(ids, dense, labels)
    holdout = baseline.holdout_rows(ids, dense)
    assert 0.05 < holdout.mean() < 0.15
    # Independent of the order the rows come in.
    order = np.random.default_rng(0).permutation(len(labels))
    np.testing.assert_array_equal(baseline.holdout_rows(ids[order], dense[order]), holdout[order])
    expected = {}
    for l2 in baseline.L2_GRID:
        alone = baseline.fit(ids[~holdout], dense[~holdout], labels[~holdout], l2=l2)
        expected[l2] = rank_auc(labels[holdout], alone.predict(ids[holdout], dense[holdout]))
    assert aucs.keys() == expected.keys()
    for l2 in expected:  # warm starts reach the same optima: AUCs equal up to round-off reordering ties
        assert aucs[l2] == pytest.approx(expected[l2], abs=1e-3)
    assert chosen == max(expected, key=lambda l2: (round(expected[l2], 3), l2)) or \
        abs(expected[chosen] - max(expected.values())) < 1e-3
    assert len(set(np.round(list(expected.values()), 3))) > 1  # the grid matters on this data


def test_fit_tuned_without_both_classes_in_the_holdout_fits_the_default():
    ids, dense, labels, _ = planted(12, 2, 3, seed=7)
    fitted, chosen, aucs = baseline.fit_tuned(ids, dense, np.zeros(12))
    assert chosen == baseline.L2 and aucs == {}


def test_auc_matches_the_rank_reference_with_ties():
    rng = np.random.default_rng(4)
    labels = rng.random(1000) < 0.3
    scores = np.round(rng.random(1000) + 0.3 * labels, 1)  # few distinct scores: many ties
    assert baseline.auc(labels, scores) == pytest.approx(rank_auc(labels, scores), abs=1e-12)
    assert baseline.auc(np.ones(5), np.arange(5)) is None


def test_baseline_auc_is_near_bayes_on_a_known_logistic_truth():
    ids, dense, labels, logits = planted(30_000, 6, 30, seed=5)
    fitted = baseline.fit(ids[:20_000], dense[:20_000], labels[:20_000])
    held_out = slice(20_000, None)
    auc = baseline.auc(labels[held_out], fitted.predict(ids[held_out], dense[held_out]))
    bayes = rank_auc(labels[held_out], logits[held_out])
    # The truth is the baseline's own model: 186 weights from 20k rows get within 0.01 of the best possible.
    assert bayes - 0.01 < auc <= bayes + 0.005, (auc, bayes)


def test_baseline_metrics_on_the_planted_splits_match_an_independent_computation(planted_data):
    layout = ExamplesLayout(planted_data)
    metadata = layout.metadata()
    metrics = baseline_metrics([layout.train_pattern], [layout.eval_pattern], metadata, eval_auc=0.5)
    arrays = {}
    for split, pattern in (("train", layout.train_pattern), ("eval", layout.eval_pattern)):
        records, labels = serialized_examples(pattern)
        examples = [tf.train.Example.FromString(r).features.feature for r in records]
        ids = np.array([[e[k].int64_list.value[0] for k in metadata.categorical_keys] for e in examples])
        dense = np.array([list(e[metadata.dense_key].float_list.value) for e in examples])
        arrays[split] = ids, dense, labels
    fitted, l2, _ = baseline.fit_tuned(*arrays["train"])
    assert metrics["baseline_l2"] == l2
    ids, dense, labels = arrays["eval"]
    # The trainer's reader interleaves the shards, so both fits see the rows in another order and their scores
    # differ by round-off, which can reorder near-ties: 1e-4 of AUC is about a hundred of the ~1M
    # (positive, negative) pairs of the eval split; a wrong row set or a wrong fit moves it by far more.
    assert metrics["baseline_auc"] == pytest.approx(rank_auc(labels, fitted.predict(ids, dense)), abs=1e-4)
    assert metrics["baseline_eval_rows"] == len(labels) == layout.row_counts["eval"]
    assert metrics["positive_rate"] == pytest.approx({"train": arrays["train"][2].mean(), "eval": labels.mean()})
    # The planted data carries signal the baseline finds.
    assert metrics["baseline_auc"] > 0.7


def test_a_model_below_the_baseline_is_warned_about(planted_data):
    layout = ExamplesLayout(planted_data)
    below = baseline_metrics([layout.train_pattern], [layout.eval_pattern], layout.metadata(), eval_auc=0.55)
    above = baseline_metrics([layout.train_pattern], [layout.eval_pattern], layout.metadata(), eval_auc=0.999)
    assert below["beats_baseline"] is False and "does not beat the baseline" in below["baseline_warning"]
    assert above["beats_baseline"] is True and above["baseline_warning"] is None
    metrics = dict(below, eval_auc=0.55, eval_log_loss=0.6, eval_examples=10, eval_positive_rate=0.3,
                   resumed_from_step=0, steps_this_run=0, steps=5, strategy="_DefaultDistributionStrategy",
                   num_workers=1, num_replicas=1, table_sharding="mirrored", serving_model_dir="/s",
                   global_batch_size=64, stopping={"mode": "train_steps"})
    text = cli.report(metrics, "/r")
    assert f"WARNING: {below['baseline_warning']}" in text and f"eval AUC {below['baseline_auc']:.4f}" in text
    assert "WARNING" not in cli.report(dict(metrics, **above), "/r")


def bag_newton_reference(ids, features, dense, labels, l2):
    """`newton_reference` for bags: the design counts each (feature, value) of a row's bags (-1 pads)."""
    pairs = sorted({(features[j], v) for row in ids for j, v in enumerate(row) if v >= 0})
    columns = {pair: i for i, pair in enumerate(pairs)}
    mean, scale = dense.mean(axis=0), dense.std(axis=0)

    def design_of(i, d):
        counts = np.zeros((len(i), len(columns)))
        for row, values in enumerate(i):
            for j, value in enumerate(values):
                if value >= 0 and (features[j], value) in columns:
                    counts[row, columns[(features[j], value)]] += 1.0
        return np.hstack([np.ones((len(i), 1)), (d - mean) / scale, counts])

    x = design_of(ids, dense)
    penalty = np.full(x.shape[1], l2)
    penalty[0] = 0.0
    w = np.zeros(x.shape[1])
    for _ in range(50):
        p = 1 / (1 + np.exp(-x @ w))
        w -= np.linalg.solve(x.T @ (x * (p * (1 - p))[:, None]) + np.diag(penalty), x.T @ (p - labels) + penalty * w)
    return lambda i, d: 1 / (1 + np.exp(-design_of(i, d) @ w))


def test_fit_with_bags_sums_each_elements_weight():
    """Issue 20: a bag feature over several columns (padded with -1), duplicates inside a bag counted twice."""
    rng = np.random.default_rng(5)
    rows = 400
    features = np.array([0, 1, 1, 1, 1, 2])
    ids = rng.integers(0, 6, size=(rows, len(features)))
    lengths = rng.integers(0, 5, rows)  # bag of feature 1: 0..4 values, the rest padding
    ids[:, 1:5][np.arange(4)[None, :] >= lengths[:, None]] = -1
    dense = np.log1p(rng.exponential(3.0, size=(rows, 2)))
    weights = rng.normal(0, 0.6, (3, 6))
    logits = -0.5 + np.where(ids >= 0, weights[features, np.maximum(ids, 0)], 0.0).sum(axis=1) + dense @ [0.3, -0.2]
    labels = (rng.random(rows) < 1 / (1 + np.exp(-logits))).astype(np.float64)
    fitted = baseline.fit(ids, dense, labels, l2=1.0, features=features)
    reference = bag_newton_reference(ids, features, dense, labels, 1.0)
    np.testing.assert_allclose(fitted.predict(ids, dense, features), reference(ids, dense), atol=1e-4)
    # Another width of padding (an eval split's longest bag differs): the same scores.
    wider = np.hstack([ids[:, :5], np.full((rows, 3), -1), ids[:, 5:]])
    wider_features = np.array([0, 1, 1, 1, 1, 1, 1, 1, 2])
    np.testing.assert_allclose(fitted.predict(wider, dense, wider_features), reference(ids, dense), atol=1e-4)
    assert baseline.holdout_rows(wider, dense).shape == (rows,)
