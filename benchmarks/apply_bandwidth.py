"""Item 2: effective bandwidth of the sparse optimizer apply against memory copy.

The apply alone (`opt.apply_gradients` on one table with a `tf.IndexedSlices`
gradient of `unique_rows` distinct rows) is timed; its effective bandwidth is
the bytes it must move (gradient rows read; touched rows of the variable and
of every slot read and written) divided by the time. The reference is a
large `numpy.copyto` (read + write) on the same machine, and a raw TF
gather + scatter of the same rows (the best a row-wise update can do with
TF's kernels). For LazyAdam the apply is also split into its stages.
"""

from __future__ import annotations

import gc

import numpy as np

from benchmarks import harness, results

NAME = "apply_bandwidth"
OPTIMIZERS = ("sgd", "momentum", "adagrad", "rowwise_adagrad", "lazy_adam", "adamw", "ftrl")
FULL = dict(rows=4_000_000, dim=32, unique_rows=65_536, optimizers=list(OPTIMIZERS), warmup=3, steps=30,
            copy_bytes=512 * 2**20)
QUICK = dict(rows=200_000, dim=32, unique_rows=8_192, optimizers=["sgd", "lazy_adam"], warmup=2, steps=5,
             copy_bytes=64 * 2**20)


def memcpy_seconds(nbytes: int, warmup: int, steps: int) -> list[float]:
    src = np.ones(nbytes // 4, np.float32)
    dst = np.empty_like(src)
    return harness.time_calls(lambda i: np.copyto(dst, src), warmup, steps)


def measure(rows, dim, unique_rows, optimizers, warmup, steps, copy_bytes) -> dict:
    """Child process body."""
    import tensorflow as tf

    import optimizers as opts

    rng = np.random.default_rng(0)
    indices = tf.constant(np.sort(rng.choice(rows, unique_rows, replace=False)).astype(np.int64))
    values = tf.constant(rng.standard_normal((unique_rows, dim)).astype(np.float32) * 1e-3)
    grad = tf.IndexedSlices(values, indices, tf.constant([rows, dim], tf.int64))
    cases = [{"params": {"case": "memcpy", "bytes": copy_bytes}, "bytes": 2 * copy_bytes,
              "repeats_s": memcpy_seconds(copy_bytes, warmup, steps)}]
    row_bytes = dim * 4
    table = tf.Variable(tf.random.uniform([rows, dim], -0.05, 0.05))

    @tf.function
    def gather_scatter():
        table.scatter_update(tf.IndexedSlices(tf.gather(table, indices) + values, indices))
        return tf.constant(0)

    cases.append({"params": {"case": "tf_gather_scatter", "rows": rows, "dim": dim, "unique_rows": unique_rows},
                  "bytes": 3 * unique_rows * row_bytes + unique_rows * 8,
                  "repeats_s": harness.time_calls(lambda i: gather_scatter().numpy(), warmup, steps)})

    @tf.function
    def dedup():
        unique, positions = tf.unique(grad.indices)
        return tf.reduce_sum(tf.math.unsorted_segment_sum(grad.values, positions, tf.shape(unique)[0])[:1])

    cases.append({"params": {"case": "stage:unique+segment_sum", "unique_rows": unique_rows},
                  "repeats_s": harness.time_calls(lambda i: dedup().numpy(), warmup, steps)})

    @tf.function
    def gather_only():
        return tf.reduce_sum(tf.gather(table, indices)[:1])

    cases.append({"params": {"case": "stage:gather", "unique_rows": unique_rows},
                  "repeats_s": harness.time_calls(lambda i: gather_only().numpy(), warmup, steps)})

    @tf.function
    def scatter_only():
        table.scatter_update(tf.IndexedSlices(values, indices))
        return tf.constant(0)

    cases.append({"params": {"case": "stage:scatter_update", "unique_rows": unique_rows},
                  "repeats_s": harness.time_calls(lambda i: scatter_only().numpy(), warmup, steps)})
    del table
    for name in optimizers:
        var = tf.Variable(tf.random.uniform([rows, dim], -0.05, 0.05), name="table")
        opt = opts.get(name, learning_rate=1e-3)
        opt.build([var])
        slot_bytes_per_row = sum(int(np.prod(v.shape[1:])) * 4 for v in opt.variables
                                 if len(v.shape) >= 1 and v.shape[0] == rows)

        @tf.function
        def apply():
            opt.apply_gradients([(grad, var)])
            return tf.constant(0)

        moved = unique_rows * (row_bytes + 2 * (row_bytes + slot_bytes_per_row)) + unique_rows * 8
        cases.append({"params": {"case": "apply", "optimizer": name, "rows": rows, "dim": dim,
                                 "unique_rows": unique_rows, "slot_bytes_per_row": slot_bytes_per_row},
                      "bytes": moved, "repeats_s": harness.time_calls(lambda i: apply().numpy(), warmup, steps)})
        del var, opt, apply
        gc.collect()
    return {"cases": cases}


def run(quick: bool, repeats: int | None = None, progress=None) -> dict:
    cfg = dict(QUICK if quick else FULL)
    if repeats:
        cfg["steps"] = repeats
    child = harness.run_child(f"{__name__}:measure", cfg)
    measurements = []
    for case in child["cases"]:
        m = results.measurement(case["params"], case["repeats_s"])
        if "bytes" in case:
            m["bytes"] = case["bytes"]
            m["bandwidth_GBps"] = case["bytes"] / m["median_s"] / 1e9
        measurements.append(m)
    by_case = {m["params"]["case"]: m for m in measurements if m["params"]["case"] != "apply"}
    copy_bw = by_case["memcpy"]["bandwidth_GBps"]
    ratios = {"tf_gather_scatter/memcpy": by_case["tf_gather_scatter"]["bandwidth_GBps"] / copy_bw}
    goals = []
    for m in measurements:
        if m["params"]["case"] != "apply":
            continue
        name = m["params"]["optimizer"]
        fraction = m["bandwidth_GBps"] / copy_bw
        ratios[f"{name}: apply/memcpy"] = fraction
        note = results.quick_note(f"{cfg['unique_rows']} unique rows of a {cfg['rows']}-row table",
                                  f"{FULL['unique_rows']} of {FULL['rows']}") if quick else ""
        goals.append(results.goal(f"apply_bandwidth {name}: effective / memcpy @{m['params']['unique_rows']} rows",
                                  ">= 0.5", fraction, fraction >= 0.5, note, full_run_only=quick))
    stages = {k.split(":", 1)[1]: v["median_s"] for k, v in by_case.items() if k.startswith("stage:")}
    notes = [f"memcpy {copy_bw:.2f} GB/s; stage medians (s): "
             + ", ".join(f"{k} {v:.5f}" for k, v in stages.items())]
    return results.benchmark(__doc__.splitlines()[0], measurements, ratios, goals, notes)
