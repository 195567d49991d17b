"""The planted ground truth behind `embedopt synth`, sampled in chunks.

Row model (all parameters drawn once from the seed):
  C_f  ~ Zipf(s) over V_f values (rank r has probability ~ r^-s), missing with prob m_f
  I_j  = floor(exp(mu_j + sigma_j * z)) - 1, z ~ N(0, 1), missing with prob q_j
  logit = b + sum_j w_j * (log1p(I_j) - mu_j) + sum_f u_f[C_f]
  label ~ Bernoulli(sigmoid(logit))
With bags (`bag_sizes`, e.g. MLPERF_BAG_SIZES), feature f holds K_f values,
each drawn as C_f is (the whole bag is missing with prob m_f), and adds
(1 / sqrt(K_f)) * sum_k u_f[C_f,k]: the same variance as one value, so the
Bayes AUC stays about where it is for one-hot rows, and a sum-pooled
embedding can represent it exactly. A value counts as frequent when it is
expected `frequent_count` times among the K_f * reference_rows draws.
A missing count enters as log1p(0) = 0 (as in the preprocessed features, where
it cannot be told from a count of 0) and a missing categorical adds 0, so the
logit is a function of what the preprocessed features show.
The per-value weights u_f are N(0, a_f^2) for "frequent" values, those
expected at least `frequent_count` times in `reference_rows` rows, and much
smaller (`tail_weight_scale`) for the long tail, so most of the signal sits
where a few hundred thousand rows can teach it. The bias b is calibrated on a
pilot sample to the target positive rate.
"""

from __future__ import annotations

import dataclasses

import numpy as np

DEFAULT_VOCAB_SIZES = (
    1_460, 583, 2_000_000, 1_000_000, 305, 24, 12_517, 633, 3, 93_145, 5_683, 500_000, 3_194,
    27, 14_992, 300_000, 10, 5_652, 2_173, 4, 400_000, 18, 15, 286_181, 105, 142_572,
)
NUM_DENSE = 13
AUC_BINS = 1 << 20
# Values per feature (C1..C26) of MLPerf Training's materialized multi-hot Criteo set (DLRM-DCNv2).
MLPERF_BAG_SIZES = (3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 100, 27, 10, 3, 1, 1)


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    seed: int = 0
    vocab_sizes: tuple[int, ...] = DEFAULT_VOCAB_SIZES
    zipf_exponent: float = 1.1
    max_categorical_missing: float = 0.3
    max_dense_missing: float = 0.4
    head_weight_scale: float = 0.4
    tail_weight_scale: float = 0.05
    dense_weight_scale: float = 0.15
    reference_rows: int = 300_000
    frequent_count: int = 300
    target_positive_rate: float = 0.25
    calibration_rows: int = 200_000
    bag_sizes: tuple[int, ...] | None = None  # values per feature; None: one each (one-hot)

    def __post_init__(self):
        if len(self.vocab_sizes) != 26 or min(self.vocab_sizes) < 1:
            raise ValueError(f"vocab_sizes needs 26 values >= 1, got {self.vocab_sizes!r}")
        if self.bag_sizes is not None and (len(self.bag_sizes) != 26 or min(self.bag_sizes) < 1):
            raise ValueError(f"bag_sizes needs 26 values >= 1, got {self.bag_sizes!r}")
        if not 0 < self.target_positive_rate < 1:
            raise ValueError(f"target_positive_rate must be in (0, 1), got {self.target_positive_rate}")


def hex_ids(feature: int, ids: np.ndarray) -> np.ndarray:
    """uint32 per (feature, value id): murmur3's finalizer, a bijection, so no two values of a feature collide."""
    h = (ids.astype(np.uint64) + np.uint64(1) + np.uint64(feature) * np.uint64(0x9E3779B9)).astype(np.uint32)
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h


@dataclasses.dataclass
class Chunk:
    cat_ids: np.ndarray  # int64 [n, sum of bag sizes]: feature f in columns offsets[f]:offsets[f+1]; -1 = missing
    counts: np.ndarray  # int64 [n, 13], -1 = missing
    logit_parts: np.ndarray  # float64 [n, 3]: dense, frequent values, tail values
    prob: np.ndarray  # float64 [n]
    label: np.ndarray  # int8 [n]


class GroundTruth:
    def __init__(self, config: SynthConfig):
        self.config = config
        rng = np.random.default_rng([config.seed, 0])
        s = config.zipf_exponent
        self.cdfs, self.weights, self.head_sizes = [], [], []
        self.bag_sizes = tuple(config.bag_sizes or (1,) * 26)
        self.offsets = np.concatenate([[0], np.cumsum(self.bag_sizes)])
        self.cat_missing = rng.uniform(0, config.max_categorical_missing, 26) * (rng.random(26) < 0.5)
        feature_scale = config.head_weight_scale * rng.uniform(0.4, 1.0, 26)
        for f, size in enumerate(config.vocab_sizes):
            pmf = np.arange(1, size + 1, dtype=np.float64) ** -s
            pmf /= pmf.sum()
            self.cdfs.append(np.cumsum(pmf))
            expected = pmf * config.reference_rows * (1 - self.cat_missing[f]) * self.bag_sizes[f]
            head = int(np.sum(expected >= config.frequent_count))
            # A stream per feature: the head size varies with frequent_count, and must not shift
            # the draws of the other features or of the dense weights.
            feature_rng = np.random.default_rng([config.seed, 0, f + 1])
            weights = feature_rng.normal(0, config.tail_weight_scale, size)
            weights[:head] = feature_rng.normal(0, feature_scale[f], head)
            self.weights.append(weights.astype(np.float32))
            self.head_sizes.append(head)
        self.dense_mu = rng.uniform(0.5, 4.0, NUM_DENSE)
        self.dense_sigma = rng.uniform(0.5, 1.5, NUM_DENSE)
        self.dense_missing = rng.uniform(0, config.max_dense_missing, NUM_DENSE) * (rng.random(NUM_DENSE) < 0.6)
        self.dense_weights = rng.normal(0, config.dense_weight_scale, NUM_DENSE)
        self.bias = 0.0
        self.bias = self._calibrated_bias()

    def _calibrated_bias(self) -> float:
        logit = self.sample(self.config.calibration_rows, stream=1).logit_parts.sum(axis=1)
        lo, hi = -20.0, 20.0
        for _ in range(60):
            mid = (lo + hi) / 2
            rate = np.mean(1 / (1 + np.exp(-(logit + mid))))
            lo, hi = (mid, hi) if rate < self.config.target_positive_rate else (lo, mid)
        return (lo + hi) / 2

    def sample(self, n: int, chunk_index: int = 0, stream: int = 2) -> Chunk:
        """Rows of one chunk; depends only on (seed, stream, chunk_index), not on other chunks."""
        rng = np.random.default_rng([self.config.seed, stream, chunk_index])
        cat_ids = np.empty((n, int(self.offsets[-1])), dtype=np.int64)
        parts = np.zeros((n, 3))
        for f in range(26):
            size = self.bag_sizes[f]
            # rng.random((n, 1)) draws what rng.random(n) does: one-hot rows are the same as before bags.
            ids = np.minimum(np.searchsorted(self.cdfs[f], rng.random((n, size))), len(self.cdfs[f]) - 1)
            ids[rng.random(n) < self.cat_missing[f]] = -1
            cat_ids[:, self.offsets[f] : self.offsets[f + 1]] = ids
            present = ids >= 0
            w = np.where(present, self.weights[f][np.maximum(ids, 0)], 0.0).astype(np.float64)
            head = present & (ids < self.head_sizes[f])
            scale = 1.0 if size == 1 else 1.0 / np.sqrt(size)
            parts[:, 1] += np.where(head, w, 0.0).sum(axis=1) * scale
            parts[:, 2] += np.where(head, 0.0, w).sum(axis=1) * scale
        z = rng.standard_normal((n, NUM_DENSE))
        counts = np.floor(np.exp(np.minimum(self.dense_mu + self.dense_sigma * z, 20.0))).astype(np.int64) - 1
        counts = np.maximum(counts, 0)
        counts[rng.random((n, NUM_DENSE)) < self.dense_missing] = -1
        x = np.log1p(np.maximum(counts, 0))
        parts[:, 0] = (x - self.dense_mu) @ self.dense_weights
        prob = 1 / (1 + np.exp(-(parts.sum(axis=1) + self.bias)))
        label = (rng.random(n) < prob).astype(np.int8)
        return Chunk(cat_ids, counts, parts, prob, label)


class StreamingStats:
    """Bayes AUC from a 2^20-bin histogram of the true probabilities, and logit variance parts."""

    def __init__(self):
        self.pos = np.zeros(AUC_BINS, dtype=np.int64)
        self.neg = np.zeros(AUC_BINS, dtype=np.int64)
        self.n = 0
        self.sums = np.zeros(4)
        self.sumsq = np.zeros(4)

    def update(self, chunk: Chunk) -> None:
        bins = np.minimum((chunk.prob * AUC_BINS).astype(np.int64), AUC_BINS - 1)
        self.pos += np.bincount(bins[chunk.label == 1], minlength=AUC_BINS)
        self.neg += np.bincount(bins[chunk.label == 0], minlength=AUC_BINS)
        values = np.column_stack([chunk.logit_parts, chunk.logit_parts.sum(axis=1)])
        self.n += len(values)
        self.sums += values.sum(axis=0)
        self.sumsq += (values**2).sum(axis=0)

    def auc(self) -> float:
        """Mann-Whitney AUC; pairs within one bin count one half (bins are 1e-6 wide)."""
        neg_below = np.cumsum(self.neg) - self.neg
        total = self.pos.sum() * self.neg.sum()
        return float(np.sum(self.pos * (neg_below + 0.5 * self.neg)) / total) if total else float("nan")

    def variances(self) -> dict[str, float]:
        var = self.sumsq / max(self.n, 1) - (self.sums / max(self.n, 1)) ** 2
        names = ("dense", "categorical_frequent", "categorical_tail", "total")
        out = {name: float(v) for name, v in zip(names, var)}
        out["frequent_and_dense_fraction"] = (out["dense"] + out["categorical_frequent"]) / out["total"]
        return out
