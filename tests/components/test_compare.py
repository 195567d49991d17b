"""`embedopt compare`: its AUC, the Bayes-optimal AUC it prints beside each optimizer's, and the table."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from components import compare


def pairwise_auc(labels, scores):
    """AUC by its definition: P(score of a positive > score of a negative), ties counting half."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_auc_equals_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.random(300) < 0.3
    scores = np.round(rng.random(300) + labels * 0.3, 1)  # rounding makes many ties
    assert compare.auc(labels, scores) == pytest.approx(pairwise_auc(labels, scores), abs=1e-12)
    assert compare.auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert compare.auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert compare.auc([0, 1], [0.5, 0.5]) == 0.5


def test_auc_is_none_for_one_class():
    assert compare.auc([1, 1, 1], [0.1, 0.2, 0.3]) is None
    assert compare.auc([0.0, 0.0], [0.1, 0.2]) is None


def test_bayes_auc_is_the_auc_of_the_planted_probabilities():
    ids, labels, probabilities = compare.make_data(20_000, 1_000, 8, seed=0)
    assert ids.shape == (20_000, 8) and labels.shape == probabilities.shape == (20_000,)
    # The labels are drawn from the probabilities.
    assert labels.mean() == pytest.approx(probabilities.mean(), abs=0.01)
    split = compare.eval_split(len(ids))
    value, why = compare.bayes_auc(labels[split:], probabilities[split:])
    assert why == "" and value == compare.auc(labels[split:], probabilities[split:])
    assert 0.6 < value < 0.8


def test_bayes_auc_says_why_it_is_not_available():
    assert compare.bayes_auc(np.array([0.0, 1.0]), None) == (None, "no planted truth: the data is not synthetic")
    value, why = compare.bayes_auc(np.ones(5), np.full(5, 0.7))
    assert value is None and "one class" in why


def test_table_prints_the_bayes_auc_and_each_gap():
    text = compare.table([("sgd", 0.6, 0.65, 1.5), ("lazy_adam", 0.55, None, 1.2)], 0.70, "", 1000)
    header, columns, sgd, lazy = text.splitlines()
    assert "Bayes-optimal AUC of the 1000 eval rows: 0.7000" in header
    assert "Bayes AUC" in columns and "AUC - Bayes" in columns
    assert sgd.split()[3:6] == ["0.6500", "0.7000", "-0.0500"]
    assert lazy.split()[3:6] == ["n/a", "0.7000", "n/a"]


def test_table_without_a_bayes_auc_prints_na_and_the_reason():
    text = compare.table([("sgd", 0.6, 0.65, 1.5)], None, "the eval rows hold one class only", 10)
    header, _, sgd = text.splitlines()
    assert header.endswith("n/a (the eval rows hold one class only)")
    assert sgd.split()[3:6] == ["0.6500", "n/a", "n/a"]


def test_compare_prints_the_bayes_auc_next_to_the_models_auc(capsys):
    assert compare.main(["--optimizers", "sgd", "--rows", "3000", "--vocab", "500", "--steps", "5",
                         "--batch-size", "64"]) == 0
    out = capsys.readouterr().out
    ids, labels, probabilities = compare.make_data(3000, 500, 8, 0)
    split = compare.eval_split(3000)
    bayes = compare.auc(labels[split:], probabilities[split:])
    assert f"Bayes-optimal AUC of the {3000 - split} eval rows: {bayes:.4f}" in out
    sgd = next(line for line in out.splitlines() if line.startswith("sgd "))
    model_auc, bayes_column, gap = sgd.split()[3:6]
    assert bayes_column == f"{bayes:.4f}"
    assert float(gap) == pytest.approx(float(model_auc) - bayes, abs=2e-4)
