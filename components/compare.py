"""`embedopt compare`: every optimizer on the same small embedding model.

Generates a click-like dataset with a planted answer (a logistic model over
per-id weights), trains a `SparseEmbedding` + linear head with each optimizer
in a custom loop, and prints a table of final loss, eval AUC and step time.
It is a quick check that every optimizer's sparse path trains, and a feel
for their relative cost. The table also gives the Bayes-optimal AUC of the
eval rows (the planted probabilities' AUC against the sampled labels, the
best any model can reach on them), so each AUC can be judged.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from components.cli import HelpFormatter

DEFAULT_LEARNING_RATES = {
    "sgd": 0.5, "momentum": 0.1, "decaying_sgd": 0.5, "adam": 0.01, "lazy_adam": 0.01, "adamw": 0.01,
    "adagrad": 0.2, "rowwise_adagrad": 0.2, "ftrl": 0.2,
}


EVAL_SHARE = 0.2  # the last 20% of the rows are the eval rows


def make_data(rows, vocab, ids_per_example, seed):
    """Zipf ids; labels from a planted logistic model over per-id weights.

    Returns (ids, labels, probabilities): `probabilities` are the planted
    model's true P(label = 1) per row, from which the labels were drawn.
    """
    rng = np.random.default_rng(seed)
    ids = np.minimum(rng.zipf(1.2, size=(rows, ids_per_example)) - 1, vocab - 1).astype(np.int64)
    weights = rng.normal(0.0, 1.0, size=vocab)
    logits = weights[ids].sum(axis=1) / np.sqrt(ids_per_example)
    probabilities = 1 / (1 + np.exp(-logits))
    labels = (rng.random(rows) < probabilities).astype(np.float32)
    return ids, labels, probabilities


def eval_split(rows: int) -> int:
    """Index of the first eval row."""
    return int(rows * (1 - EVAL_SHARE))


def auc(labels, scores) -> float | None:
    """Exact ROC AUC (Mann-Whitney, ties count half); None when the labels hold one class only."""
    labels = np.asarray(labels) > 0.5
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        return None
    _, inverse, counts = np.unique(np.asarray(scores, np.float64), return_inverse=True, return_counts=True)
    # Average rank (1-based) of each distinct score, so tied scores share their rank.
    average_rank = np.cumsum(counts) - (counts - 1) / 2
    rank_sum = average_rank[inverse][labels].sum()
    return float((rank_sum - positives * (positives + 1) / 2) / (positives * negatives))


def bayes_auc(labels, probabilities) -> tuple[float | None, str]:
    """(Bayes-optimal AUC of these rows, "") or (None, why it is not available).

    The Bayes-optimal AUC is the AUC of the true probabilities against the
    labels drawn from them: no model can do better on these rows.
    """
    if probabilities is None:
        return None, "no planted truth: the data is not synthetic"
    value = auc(labels, probabilities)
    if value is None:
        return None, "the eval rows hold one class only (use more --rows)"
    return value, ""


def train_one(name, ids, labels, vocab, dim, batch_size, steps, lr):
    import keras
    import tensorflow as tf

    import optimizers

    keras.utils.set_random_seed(0)
    embedding = optimizers.SparseEmbedding(vocab, dim, embeddings_initializer="zeros")
    head = keras.layers.Dense(1)
    opt = optimizers.get(name, learning_rate=lr)
    split = eval_split(len(ids))
    embedding.build()
    head.build((None, dim))
    variables = embedding.trainable_variables + head.trainable_variables
    opt.build(variables)

    def logits_of(x):
        return tf.squeeze(head(tf.reduce_sum(embedding(x), axis=1)), -1)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=logits_of(x)))
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    rng = np.random.default_rng(1)
    times, loss = [], None
    for i in range(steps):
        batch = rng.integers(0, split, size=batch_size)
        start = time.perf_counter()
        loss = float(step(tf.constant(ids[batch]), tf.constant(labels[batch])))
        if i >= 2:  # exclude tracing and warm-up
            times.append(time.perf_counter() - start)
    eval_auc = auc(labels[split:], logits_of(tf.constant(ids[split:])).numpy())
    return loss, eval_auc, float(np.median(times)) * 1000


def build_parser():
    from components.trainer.fn_args import OPTIMIZER_NAMES as OPTIMIZERS  # the names without TensorFlow, for --help

    parser = argparse.ArgumentParser(formatter_class=HelpFormatter,
        prog="embedopt compare",
        description="Train the same SparseEmbedding model with each optimizer on generated data and "
        "print final loss, eval AUC and median step time, beside the Bayes-optimal AUC of the eval rows "
        "(the planted probabilities' AUC: no model can beat it).",
    )
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS),
                        help="comma-separated optimizer names (default: all)")
    parser.add_argument("--rows", type=int, default=50_000, help="generated examples (default: 50000)")
    parser.add_argument("--vocab", type=int, default=100_000, help="embedding table rows (default: 100000)")
    parser.add_argument("--dim", type=int, default=16, help="embedding width (default: 16)")
    parser.add_argument("--ids-per-example", type=int, default=8, help="ids looked up per example (default: 8)")
    parser.add_argument("--batch-size", type=int, default=512, help="batch size (default: 512)")
    parser.add_argument("--steps", type=int, default=300, help="training steps per optimizer (default: 300)")
    parser.add_argument("--seed", type=int, default=0, help="data seed (default: 0)")
    parser.add_argument("--verbose", "-v", action="store_true",
                   help="also print TensorFlow's start-up lines and the INFO logs of TensorFlow and Beam")
    return parser


def main(argv: list[str]) -> int:
    from components.quiet import configure_logging, import_tensorflow

    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    import_tensorflow(args.verbose)
    from optimizers import OPTIMIZERS

    names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
    unknown = [n for n in names if n not in OPTIMIZERS]
    if unknown:
        print(f"embedopt compare: unknown optimizer(s) {unknown}; valid: {', '.join(OPTIMIZERS)}", file=sys.stderr)
        return 2
    from tqdm import tqdm

    ids, labels, probabilities = make_data(args.rows, args.vocab, args.ids_per_example, args.seed)
    rows = []
    for name in tqdm(names, desc="optimizers", file=sys.stderr):
        rows.append((name, *train_one(name, ids, labels, args.vocab, args.dim, args.batch_size, args.steps,
                                      DEFAULT_LEARNING_RATES[name])))
    split = eval_split(args.rows)
    bayes, why = bayes_auc(labels[split:], probabilities[split:])
    print(f"\n{args.rows} examples, table {args.vocab} x {args.dim}, batch {args.batch_size}, {args.steps} steps")
    print(table(rows, bayes, why, args.rows - split))
    return 0


def _number(value: float | None, width: int) -> str:
    return f"{value:>{width}.4f}" if value is not None else f"{'n/a':>{width}}"


def table(rows, bayes: float | None, why: str, eval_rows: int) -> str:
    """The printed result: one line per (optimizer, final loss, eval AUC, step ms), with the Bayes AUC."""
    if bayes is None:
        lines = [f"Bayes-optimal AUC of the {eval_rows} eval rows: n/a ({why})"]
    else:
        lines = [f"Bayes-optimal AUC of the {eval_rows} eval rows: {bayes:.4f} (the planted probabilities' AUC; "
                 "no model can beat it)"]
    lines.append(f"{'optimizer':<16} {'lr':>6} {'final loss':>10} {'eval AUC':>9} {'Bayes AUC':>9} "
                 f"{'AUC - Bayes':>11} {'step ms':>8}")
    for name, loss, model_auc, ms in rows:
        gap = model_auc - bayes if model_auc is not None and bayes is not None else None
        gap_text = f"{gap:>+11.4f}" if gap is not None else f"{'n/a':>11}"
        lines.append(f"{name:<16} {DEFAULT_LEARNING_RATES[name]:>6g} {loss:>10.4f} {_number(model_auc, 9)} "
                     f"{_number(bayes, 9)} {gap_text} {ms:>8.2f}")
    return "\n".join(lines)
