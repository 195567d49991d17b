"""The drifting stream of `benchmarks.dynamic_tables` and its AUC, against plain NumPy references."""

import itertools

import numpy as np
import pytest

from benchmarks.dynamic_tables import DriftConfig, auc, drift_stream, mix64

SMALL = DriftConfig(features=3, window=50, slide=20, periods=4, examples=4000, seed=7)


def pairwise_auc(labels, scores):
    """P(score of a positive > score of a negative) + P(tie) / 2, over every pair."""
    pos = [s for y, s in zip(labels, scores) if y]
    neg = [s for y, s in zip(labels, scores) if not y]
    wins = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_ids_stay_in_their_periods_sliding_window():
    for t, period in enumerate(drift_stream(SMALL)):
        lo = t * SMALL.slide
        assert period.ids.min() >= lo and period.ids.max() < lo + SMALL.window


def test_new_ids_appear_and_old_ones_fade():
    periods = drift_stream(SMALL)
    for f in range(SMALL.features):
        first, second, last = (set(periods[t].ids[:, f]) for t in (0, 1, -1))
        assert any(i >= SMALL.window for i in last)  # ids born after the first period
        assert not any(i < (SMALL.periods - 1) * SMALL.slide for i in last)  # the oldest ids are gone
        assert first & second  # consecutive windows overlap: drift, not a jump


def test_keys_keep_features_apart_and_hold_the_ids():
    period = drift_stream(SMALL)[1]
    np.testing.assert_array_equal(period.keys & ((1 << 40) - 1), period.ids)
    np.testing.assert_array_equal(period.keys >> 40, np.broadcast_to(np.arange(SMALL.features), period.ids.shape))


def test_labels_follow_the_planted_logits():
    # Mean label against mean sigmoid(logit): 4000 Bernoulli draws give a standard error under 0.008; 4 sigma.
    for period in drift_stream(SMALL):
        p = 1.0 / (1.0 + np.exp(-period.logits))
        assert abs(period.labels.mean() - p.mean()) < 4 * np.sqrt(0.25 / SMALL.examples)
    # Each id's weight is fixed: two occurrences of the same ids give the same logit.
    period = drift_stream(SMALL)[0]
    _, first = np.unique(period.ids, axis=0, return_index=True)
    for row in first[:50]:
        same = (period.ids == period.ids[row]).all(axis=1)
        np.testing.assert_array_equal(period.logits[same], period.logits[row])


def test_same_seed_same_stream_other_seed_other_stream():
    a, b = drift_stream(SMALL), drift_stream(SMALL)
    c = drift_stream(DriftConfig(**{**SMALL.__dict__, "seed": 8}))
    np.testing.assert_array_equal(a[2].keys, b[2].keys)
    np.testing.assert_array_equal(a[2].labels, b[2].labels)
    assert not np.array_equal(a[2].keys, c[2].keys)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_the_pairwise_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 120)
    scores = rng.integers(0, 15, 120).astype(np.float64)  # many ties
    assert auc(labels, scores) == pytest.approx(pairwise_auc(labels, scores), abs=1e-12)


def test_auc_is_nan_with_one_class():
    assert np.isnan(auc(np.ones(5), np.arange(5.0)))


def test_mix64_matches_splitmix64_on_python_ints():
    def splitmix(z):
        m = 2**64 - 1
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
        return z ^ (z >> 31)

    keys = np.array([0, 1, -1, 2**63 - 1, -(2**63), 123456789], np.int64)
    expected = [splitmix(int(k) % 2**64) for k in keys]
    assert [int(v) for v in mix64(keys)] == expected


@pytest.mark.parametrize("field,value", [("window", 0), ("slide", 51), ("slide", -1), ("periods", 0)])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        DriftConfig(**{**SMALL.__dict__, field: value})
