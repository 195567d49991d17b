"""Issue 23: DynamicEmbedding's step time against a fixed table, and its AUC on a drifting id stream.

Step time: one step = lookup of `batch x ids_per_example` keys, sum-pool, a
linear head, binary cross-entropy, backward, `reset_slots` (dynamic only)
and LazyAdam's apply, in one `tf.function`, for a `DynamicEmbedding` of
`capacity` rows and a `SparseEmbedding` of as many rows, in one child
process, the two tables' steps alternating. Two streams: Zipf over 0.9 x capacity ids (the keys fit: admissions,
no eviction) and Zipf over 10 x capacity ids (admit_after=1: thousands of
admissions and evictions a step; the fixed table reads id % capacity).

Quality: a seeded stream of periods (`drift_stream`) whose ids slide (new ids
appear, old ones fade), with planted per-id weights, so the Bayes AUC is
known. Three models with the same number of rows train online (evaluate on
period t, then train on it): a DynamicEmbedding keyed by raw ids, a
SparseEmbedding indexed by a hash of the id modulo the rows, and a
SparseEmbedding over the vocabulary of the first period's most frequent ids
(every other id reads one OOV row).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from benchmarks import harness, results
from benchmarks.step_time import zipf_ids

NAME = "dynamic_tables"
MODELS = ("dynamic", "hashed", "vocabulary")
STREAMS = {"fits": 0.9, "evicting": 10.0}  # stream -> distinct ids / capacity
FULL = dict(capacity=100_000, dim=32, batch=4096, ids_per_example=26, warmup=4, steps=30, threads=2,
            drift=dict(features=4, window=5000, slide=1500, periods=8, examples=50_000), batch_quality=512)
QUICK = dict(capacity=20_000, dim=32, batch=1024, ids_per_example=26, warmup=2, steps=4, threads=2,
             drift=dict(features=4, window=2000, slide=600, periods=4, examples=12_000), batch_quality=512)
STEP_GOAL = 1.5
_MASK64 = np.uint64(2**64 - 1)
_FEATURE_SHIFT = 40  # key = feature << 40 | id: the features' ids never collide as raw keys


def mix64(x) -> np.ndarray:
    """SplitMix64's finalizer on int64 keys (wrapping uint64 arithmetic): a fingerprint-like scramble."""
    z = np.asarray(x, np.int64).view(np.uint64) if np.asarray(x).dtype == np.int64 else np.asarray(x, np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return z


@dataclasses.dataclass(frozen=True)
class DriftConfig:
    """A drifting stream: `periods` periods of `examples` examples, each with one id per feature.

    Feature f's ids are 0, 1, 2, ...; period t draws them from the window
    `[t * slide, t * slide + window)`, each id with a popularity
    `(1 + r) ** -exponent` fixed at its birth (r uniform in [0, window)), so
    the draws are Zipf-like and every period brings `slide` new ids per feature
    while `slide` old ones stop appearing. Each id has a planted weight
    N(0, weight_scale**2); label ~ Bernoulli(sigmoid(bias + sum of the
    example's ids' weights)).
    """

    features: int = 4
    window: int = 5000
    slide: int = 1500
    periods: int = 8
    examples: int = 50_000
    exponent: float = 1.1
    weight_scale: float = 0.8
    bias: float = -0.5
    seed: int = 0

    def __post_init__(self):
        for name in ("features", "window", "periods", "examples"):
            if getattr(self, name) < 1:
                raise ValueError(f"DriftConfig: `{name}` must be >= 1, got {getattr(self, name)!r}")
        if not 0 <= self.slide <= self.window:
            raise ValueError(f"DriftConfig: `slide` must be in [0, window={self.window}], got {self.slide!r}")

    @property
    def ids_per_feature(self) -> int:
        return self.window + (self.periods - 1) * self.slide


@dataclasses.dataclass(frozen=True)
class Period:
    """One period: `ids` [examples, features] (per-feature ids), raw `keys` (feature << 40 | id), labels, true logits."""

    ids: np.ndarray
    keys: np.ndarray
    labels: np.ndarray
    logits: np.ndarray


def drift_stream(cfg: DriftConfig) -> list[Period]:
    """The periods of `cfg`'s stream (deterministic in `cfg.seed`)."""
    rng = np.random.default_rng(cfg.seed)
    n = cfg.ids_per_feature
    popularity = (1.0 + rng.integers(0, cfg.window, (cfg.features, n))) ** -cfg.exponent
    weights = rng.normal(0.0, cfg.weight_scale, (cfg.features, n))
    periods = []
    for t in range(cfg.periods):
        lo = t * cfg.slide
        ids = np.empty((cfg.examples, cfg.features), np.int64)
        for f in range(cfg.features):
            p = popularity[f, lo:lo + cfg.window]
            ids[:, f] = lo + rng.choice(cfg.window, cfg.examples, p=p / p.sum())
        logits = cfg.bias + weights[np.arange(cfg.features), ids].sum(axis=1)
        labels = (rng.random(cfg.examples) < 1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
        keys = (np.arange(cfg.features, dtype=np.int64) << _FEATURE_SHIFT) | ids
        periods.append(Period(ids, keys, labels, logits))
    return periods


def auc(labels, scores) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count one half); NaN when one class is missing."""
    labels = np.asarray(labels) > 0.5
    scores = np.asarray(scores, np.float64)
    positives = int(labels.sum())
    negatives = labels.size - positives
    if not positives or not negatives:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    # Average rank of each distinct score (1-based), so tied scores share their ranks.
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0
    rank_sum = average_rank[inverse][labels].sum()
    return float((rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))


def _pooled_logit_model(table, training_arg: bool):
    import keras
    import tensorflow as tf

    class PooledLogit(keras.Model):
        def __init__(self):
            super().__init__()
            self.table = table
            self.head = keras.layers.Dense(1)

        def call(self, keys, training=None):
            rows = self.table(keys, training=training) if training_arg else self.table(keys)
            return tf.squeeze(self.head(tf.reduce_sum(rows, axis=1)), -1)

    return PooledLogit()


def _make_step(model, opt, tables):
    import tensorflow as tf

    from optimizers.dynamic import train_step_with_reset

    def loss_fn(y, logits):
        return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=logits))

    return tf.function(lambda x, y: train_step_with_reset(model, opt, loss_fn, x, y, tables))


def _build(kind, rows, dim, learning_rate, seed=0):
    """(model, optimizer, step) for a "dynamic" or a fixed ("fixed", "hashed", "vocabulary") table of `rows` rows."""
    import keras

    import optimizers as embedopt

    keras.utils.set_random_seed(seed)
    if kind == "dynamic":
        table = embedopt.DynamicEmbedding(dim, capacity=rows, admit_after=1, eviction="lru", seed=seed)
    else:
        table = embedopt.SparseEmbedding(rows, dim, validate_ids=False)
    model = _pooled_logit_model(table, kind == "dynamic")
    opt = embedopt.get("lazy_adam", learning_rate=learning_rate)
    return model, opt, _make_step(model, opt, [table] if kind == "dynamic" else [])


def measure_steps(capacity, dim, batch, ids_per_example, warmup, steps, threads) -> dict:
    """Child process: per stream, the step times of the fixed and the dynamic table, and the dynamic counters.

    The two tables' steps alternate (fixed i, dynamic i, fixed i + 1, ...), so that both see the same machine:
    timing one table's steps, then the other's, moved the ratio by +-0.2 between runs on a quiet machine.
    """
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    out = {}
    for stream, spread in STREAMS.items():
        distinct = int(spread * capacity)
        ids = zipf_ids(distinct, (warmup + steps, batch, ids_per_example), seed=1)
        inputs = {"fixed": [tf.constant(b % capacity) for b in ids],
                  "dynamic": [tf.constant(mix64(b).view(np.int64)) for b in ids]}  # raw 64-bit keys
        labels = [tf.constant(np.random.default_rng(100 + i).integers(0, 2, batch).astype(np.float32))
                  for i in range(len(ids))]
        built = {kind: _build(kind, capacity, dim, 1e-3) for kind in inputs}
        before = {}
        times = {kind: [] for kind in inputs}
        for i in range(warmup + steps):
            if i == warmup:
                before.update(built["dynamic"][0].table.counters())
            for kind, (_, _, step) in built.items():
                start = time.perf_counter()
                step(inputs[kind][i], labels[i]).numpy()
                if i >= warmup:
                    times[kind].append(time.perf_counter() - start)
        unique = float(np.mean([len(np.unique(b)) for b in ids]))
        after = built["dynamic"][0].table.counters()
        out[f"{stream}:fixed"] = {"repeats_s": times["fixed"], "unique_per_batch": unique}
        out[f"{stream}:dynamic"] = dict(
            {"repeats_s": times["dynamic"], "unique_per_batch": unique},
            **{f"{k}_per_step": (after[k] - before[k]) / steps for k in ("admissions", "evictions")},
            rows_in_use=after["rows_in_use"])
    return {"cases": out}


def measure_quality(drift: dict, batch_quality: int, dim: int = 8, learning_rate: float = 0.02) -> dict:
    """Child process: AUC per period of the three same-memory models and of the planted weights (Bayes)."""
    import tensorflow as tf

    cfg = DriftConfig(**drift)
    periods = drift_stream(cfg)
    rows = cfg.features * cfg.window  # the keys active in one period, at most
    first = periods[0].keys.ravel()
    uniq, counts = np.unique(first, return_counts=True)
    top = uniq[np.argsort(-counts, kind="stable")[:rows - 1]]
    lookup = {int(k): i + 1 for i, k in enumerate(top)}  # row 0 is the OOV row
    inputs = {
        "dynamic": lambda keys: keys,
        "hashed": lambda keys: (mix64(keys) % np.uint64(rows)).astype(np.int64),
        "vocabulary": lambda keys: np.vectorize(lambda k: lookup.get(int(k), 0), otypes=[np.int64])(keys),
    }
    curves = {name: [] for name in MODELS}
    for name in MODELS:
        model, _, step = _build(name, rows, dim, learning_rate)
        for t, period in enumerate(periods):
            x = inputs[name](period.keys)
            if t > 0:
                curves[name].append(auc(period.labels, model(tf.constant(x), training=False).numpy()))
            for lo in range(0, cfg.examples, batch_quality):
                step(tf.constant(x[lo:lo + batch_quality]), tf.constant(period.labels[lo:lo + batch_quality]))
        if name == "dynamic":
            curves["dynamic_counters"] = model.table.counters()
    new_share = [float(np.mean(~np.isin(p.keys, first))) for p in periods[1:]]
    return dict(curves, bayes=[auc(p.labels, p.logits) for p in periods[1:]], rows=rows, new_key_share=new_share,
                config=dataclasses.asdict(cfg))


def run(quick: bool, repeats: int | None = None, progress=None) -> dict:
    cfg = QUICK if quick else FULL
    steps = repeats or cfg["steps"]
    timing = harness.run_child(f"{__name__}:measure_steps", dict(
        capacity=cfg["capacity"], dim=cfg["dim"], batch=cfg["batch"], ids_per_example=cfg["ids_per_example"],
        warmup=cfg["warmup"], steps=steps, threads=cfg["threads"]))
    if progress:
        progress(f"{NAME}: step times done, drift stream")
    start = time.perf_counter()
    quality = harness.run_child(f"{__name__}:measure_quality", dict(drift=cfg["drift"],
                                                                      batch_quality=cfg["batch_quality"]))
    quality_seconds = time.perf_counter() - start
    measurements, ratios, goals = [], {}, []
    base = dict(capacity=cfg["capacity"], dim=cfg["dim"], batch=cfg["batch"], ids_per_example=cfg["ids_per_example"],
                optimizer="lazy_adam", threads=cfg["threads"])
    for key, case in timing["cases"].items():
        stream, kind = key.split(":")
        extra = {k: v for k, v in case.items() if k != "repeats_s"}
        measurements.append(results.measurement(dict(base, stream=stream, table=kind, distinct_ids=int(
            STREAMS[stream] * cfg["capacity"])), case["repeats_s"], **extra))
    median = {(m["params"]["stream"], m["params"]["table"]): m["median_s"] for m in measurements}
    sizes = f"{cfg['capacity']:,} rows x {cfg['dim']}, batch {cfg['batch']} x {cfg['ids_per_example']}"
    for stream in STREAMS:
        ratio = median[(stream, "dynamic")] / median[(stream, "fixed")]
        ratios[f"{stream}: dynamic / fixed step"] = ratio
        note = (f"{stream} stream: fixed {1000 * median[(stream, 'fixed')]:.1f} ms, dynamic "
                f"{1000 * median[(stream, 'dynamic')]:.1f} ms ({sizes})")
        if quick:
            note += " " + results.quick_note(sizes, "100,000 rows x 32, batch 4096 x 26")
        goals.append(results.goal(f"dynamic_tables: dynamic / fixed step, {stream} stream", f"<= {STEP_GOAL}",
                                  ratio, ratio <= STEP_GOAL, note, full_run_only=quick))
    mean = {name: float(np.mean(quality[name])) for name in (*MODELS, "bayes")}
    for name in (*MODELS, "bayes"):
        ratios[f"AUC {name} (mean of periods 2..)"] = mean[name]
    quality_params = dict(quality["config"], rows=quality["rows"], dim=8, optimizer="lazy_adam", part="quality")
    peak_rss = quality.pop("peak_rss_bytes", None)
    measurements.append(results.measurement(quality_params, [quality_seconds], auc=quality, mean_auc=mean,
                                            peak_rss_bytes=peak_rss))
    drift_note = (f"{quality['rows']:,} rows each; mean AUC over periods 2..{len(quality['bayes']) + 1}: "
                  + ", ".join(f"{name} {mean[name]:.4f}" for name in (*MODELS, "bayes")))
    goals.append(results.goal("dynamic_tables: AUC dynamic - hashed (drifting stream)", ">= 0",
                              mean["dynamic"] - mean["hashed"], mean["dynamic"] >= mean["hashed"], drift_note))
    gap = float(np.mean(np.subtract(quality["dynamic"], quality["vocabulary"])))
    goals.append(results.goal("dynamic_tables: AUC dynamic - vocabulary (periods 2.., new ids in each)", "> 0", gap,
                              gap > 0, drift_note + "; share of keys not in the first period: "
                              + ", ".join(f"{s:.0%}" for s in quality["new_key_share"])))
    notes = [f"dynamic table after the drift stream: {quality['dynamic_counters']}",
             "the quality measurement's repeats_s is the wall time of its whole child (3 models, every period)"]
    return results.benchmark(__doc__.splitlines()[0], measurements, ratios, goals, notes)

