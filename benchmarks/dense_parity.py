"""Item 3: dense path, our `Adam` against `keras.optimizers.Adam` on an MLP.

Both optimizers train the same MLP (same initial weights, same batches) in a
`tf.function` step; the two are timed step by step in alternation (the
order flipping every step) so that machine load falls on both alike. The apply alone (fixed gradients) is timed too,
since the forward/backward pass dilutes the difference in a full step.
"""

from __future__ import annotations

import statistics

import numpy as np

from benchmarks import harness, results

NAME = "dense_parity"
FULL = dict(batch=2048, features=256, hidden=(1024, 1024, 512), warmup=3, steps=40)
QUICK = dict(batch=256, features=64, hidden=(128, 128), warmup=2, steps=6)


def _mlp(features, hidden):
    import keras

    layers = [keras.Input((features,))]
    layers += [keras.layers.Dense(h, activation="relu") for h in hidden]
    layers.append(keras.layers.Dense(1))
    model = keras.Sequential(layers)
    keras.utils.set_random_seed(0)
    return model


def build(which: str, features, hidden, batch):
    import keras
    import tensorflow as tf

    import optimizers

    keras.utils.set_random_seed(0)
    model = _mlp(features, hidden)
    opt = optimizers.Adam(1e-3) if which == "ours" else keras.optimizers.Adam(1e-3)
    opt.build(model.trainable_variables)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.standard_normal((batch, features)).astype(np.float32))
    y = tf.constant(rng.integers(0, 2, (batch, 1)).astype(np.float32))
    grads = [tf.constant(rng.standard_normal(v.shape).astype(np.float32) * 1e-3) for v in model.trainable_variables]

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=model(x)))
        opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    @tf.function
    def apply():
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return tf.constant(0)

    return step, apply


def run(quick: bool, repeats: int | None = None, progress=None) -> dict:
    cfg = QUICK if quick else FULL
    steps = repeats or cfg["steps"]
    fns = {which: build(which, cfg["features"], cfg["hidden"], cfg["batch"]) for which in ("ours", "keras")}
    times = {(which, kind): [] for which in fns for kind in ("step", "apply")}
    for kind, index in (("step", 0), ("apply", 1)):
        for fn in fns.values():
            harness.time_calls(lambda i: fn[index]().numpy(), cfg["warmup"], 0)
        for i in range(steps):
            # Alternate which goes first, so that load changes fall on both alike.
            for which in (("ours", "keras") if i % 2 == 0 else ("keras", "ours")):
                times[(which, kind)] += harness.time_calls(lambda _: fns[which][index]().numpy(), 0, 1)
    params = dict(batch=cfg["batch"], features=cfg["features"], hidden=list(cfg["hidden"]))
    measurements = [results.measurement(dict(params, optimizer=which, timed=kind), t) for (which, kind), t in times.items()]
    med = {(m["params"]["optimizer"], m["params"]["timed"]): m["median_s"] for m in measurements}
    ratios = {f"ours/keras {kind}": med[("ours", kind)] / med[("keras", kind)] for kind in ("step", "apply")}
    for kind in ("step", "apply"):
        paired = [a / b for a, b in zip(times[("ours", kind)], times[("keras", kind)])]
        ratios[f"ours/keras {kind}, median of paired ratios"] = statistics.median(paired)
    note = results.quick_note(f"an MLP {cfg['features']}->{cfg['hidden']} at batch {cfg['batch']}, where per-op "
                              f"overhead dominates", f"{FULL['features']}->{FULL['hidden']} at batch {FULL['batch']}"
                              ) if quick else ""
    goals = [results.goal("dense_parity: our Adam step / keras Adam step (MLP)", "<= 1.1", ratios["ours/keras step"],
                          ratios["ours/keras step"] <= 1.1, note, full_run_only=quick)]
    return results.benchmark(__doc__.splitlines()[0], measurements, ratios, goals)
