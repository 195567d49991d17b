"""Training-step time of an embedding model: our sparse path vs Keras built-ins.

One step = lookup of `batch x ids_per_example` Zipf-distributed ids in a
`rows x dim` table, sum-pool, a linear head, binary cross-entropy, gradient
and optimizer apply, all inside one `tf.function`. Warm-up steps (tracing)
are excluded; the median of the timed steps is reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

# (embedding layer, optimizer) pairs compared. "ours" gathers from the
# variable and applies a lazy rule; "keras" is the built-in pair.
PAIRS = ("ours", "keras")


def zipf_ids(rows, shape, seed=0, exponent=1.1):
    rng = np.random.default_rng(seed)
    return np.minimum(rng.zipf(exponent, size=shape) - 1, rows - 1).astype(np.int64)


def build_step(pair, rows, dim, optimizer="lazy_adam", learning_rate=1e-3):
    import keras
    import tensorflow as tf

    import optimizers

    if pair == "ours":
        embedding = optimizers.SparseEmbedding(rows, dim, validate_ids=False)
        opt = optimizers.get(optimizer, learning_rate=learning_rate)
    elif pair == "keras":
        embedding = keras.layers.Embedding(rows, dim)
        builtin = {"lazy_adam": "adam", "adam": "adam", "adamw": "adamw", "rowwise_adagrad": "adagrad"}
        opt = keras.optimizers.get({"class_name": builtin.get(optimizer, optimizer),
                                   "config": {"learning_rate": learning_rate}})
    else:
        raise ValueError(f"pair must be one of {PAIRS}, got {pair!r}")
    head = keras.layers.Dense(1)
    embedding.build((None, None))
    head.build((None, dim))
    variables = embedding.trainable_variables + head.trainable_variables
    opt.build(variables)

    @tf.function(jit_compile=False)
    def step(ids, labels):
        with tf.GradientTape() as tape:
            pooled = tf.reduce_sum(embedding(ids), axis=1)
            logits = tf.squeeze(head(pooled), -1)
            loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits))
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    return step


def time_steps(pair, rows, dim=32, batch=4096, ids_per_example=26, steps=20, warmup=3, optimizer="lazy_adam"):
    """Per-step seconds (list) for `pair` at this table size."""
    import tensorflow as tf

    step = build_step(pair, rows, dim, optimizer)
    batches = [
        (tf.constant(zipf_ids(rows, (batch, ids_per_example), seed=i)),
         tf.constant(np.random.default_rng(i).integers(0, 2, batch).astype(np.float32)))
        for i in range(4)
    ]
    times = []
    for i in range(warmup + steps):
        ids, labels = batches[i % len(batches)]
        start = time.perf_counter()
        step(ids, labels).numpy()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--optimizer", default="lazy_adam")
    args = parser.parse_args(argv)
    result = {}
    for pair in PAIRS:
        times = time_steps(pair, args.rows, args.dim, args.batch, steps=args.steps, optimizer=args.optimizer)
        result[pair] = {"median_ms": 1000 * statistics.median(times), "times_ms": [1000 * t for t in times]}
    result["ratio_keras_over_ours"] = result["keras"]["median_ms"] / result["ours"]["median_ms"]
    result.update(rows=args.rows, dim=args.dim, batch=args.batch, optimizer=args.optimizer)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
