"""Item 8: row-sharded vs mirrored tables on two local workers, 1M, 4M, 10M and 20M rows.

Two processes on localhost ports (`TF_CONFIG`, worker 0 the chief) train the
item-1 model (table + sum-pool + linear head, `LazyAdam`, batch 4096 x 26
Zipf ids split 2048 per worker) under `MultiWorkerMirroredStrategy`, with the
table either a `ShardedEmbedding` (each worker holds rows `id % 2 == index`
and their slots) or a mirrored `SparseEmbedding` (each worker holds the whole
table and its slots); both start from the same `RowUniform` rows. Every
(layout, rows) case runs in a fresh pair of processes, so each worker's RSS
belongs to that case alone: before the build (runtime), after the build,
after the timed steps, and the peak. Table + slot bytes are the sizes of the
worker's own copies of the table and its `LazyAdam` slots. From their growth
with the rows, the largest table each layout holds is computed for this
machine's RAM and for 8 workers on 80 GB GPUs.

A case whose peak RSS, scaled from the layout's largest smaller case, would
not fit in the memory available (less a reserve for the OS) is not run and
is named in the notes: a mirrored 10M-row table's build peaks near 2.5x its
variables on each worker, too much for two of them on a 24 GB machine.
"""

from __future__ import annotations

import gc
import json
import os

import numpy as np

from benchmarks import harness, multi_worker, results, step_time

NAME = "sharded_tables"
LAYOUTS = ("sharded", "mirrored")
GIB = 2**30
# Capacity model: what is left for tables and slots after the OS/runtime reserve, per machine.
HOST_RESERVE_BYTES = 4 * GIB  # OS, page cache and anything else on this machine besides the two workers
GPU_BYTES = 80 * 10**9  # an "80 GB" GPU (A100/H100 80GB)
GPU_HEADROOM_BYTES = 10 * GIB  # CUDA context, allocator fragmentation, activations, dense layers, exchange buffers
GPU_WORKERS = 8
GOAL_ROWS = 10_000_000
# 20M rows: sharded fits here, mirrored would not (it is skipped by the memory check, with a note).
FULL = dict(rows=[1_000_000, 4_000_000, 10_000_000, 20_000_000], dim=32, global_batch=4096, warmup=3, steps=30,
            fresh_processes=True)
# Quick: every case in one pair of processes (starting a pair costs more than a quick case).
QUICK = dict(rows=[10_000, 100_000], dim=32, global_batch=512, warmup=2, steps=4, fresh_processes=False)


def train_case(strategy, index, layout, rows, dim, global_batch, warmup, steps) -> dict:
    """One (layout, rows) case on this worker: build, measure its memory, time the steps."""
    import time

    import keras
    import tensorflow as tf

    import optimizers

    local_batch = global_batch // strategy.num_replicas_in_sync
    batches, unique = step_time.make_batches(rows, local_batch, 26, count=4)
    rss_runtime = harness.current_rss_bytes()
    start = time.perf_counter()
    init = optimizers.RowUniform(-0.05, 0.05, seed=0)
    with strategy.scope():
        if layout == "sharded":
            table = optimizers.ShardedEmbedding(rows, dim, embeddings_initializer=init, validate_ids=False)
        elif layout == "mirrored":
            table = optimizers.SparseEmbedding(rows, dim, embeddings_initializer=init, validate_ids=False)
        else:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        head = keras.layers.Dense(1)
        table.build()
        head.build((None, dim))
        variables = [table.embeddings] + head.trainable_variables
        opt = optimizers.LazyAdam(1e-3)
        opt.build(variables)
    build_s = time.perf_counter() - start
    rss_after_build = harness.current_rss_bytes()
    # This worker's own copy of each: a shard for "sharded", a whole replica of a mirrored variable otherwise.
    table_vars = [table.embeddings] + [opt.get_slot(table.embeddings, name) for name in opt.slot_names]
    table_slot_bytes = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in table_vars)

    def replica_step(ids, labels):
        with tf.GradientTape() as tape:
            logits = tf.squeeze(head(tf.reduce_sum(table(ids), axis=1)), -1)
            per_example = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    @tf.function
    def train_step(ids, labels):
        return strategy.reduce("SUM", strategy.run(replica_step, args=(ids, labels)), axis=None)

    # Each worker feeds its own shard of the global batch: offset the seed by the worker index.
    times = harness.time_calls(lambda i: train_step(*batches[(i + index) % len(batches)]).numpy(), warmup, steps)
    return {"layout": layout, "rows": rows, "repeats_s": times, "local_rows": int(table.embeddings.shape[0]),
            "table_slot_bytes": table_slot_bytes, "build_s": build_s, "unique_rows_per_worker_batch": unique,
            "rss_runtime_bytes": rss_runtime, "rss_after_build_bytes": rss_after_build,
            "rss_after_steps_bytes": harness.current_rss_bytes()}


def worker(cases, dim, global_batch, warmup, steps) -> dict:
    """Child process body for one worker (TF_CONFIG set by the parent): `cases` is a list of [layout, rows]."""
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    out = []
    for layout, rows in cases:
        out.append(train_case(strategy, index, layout, rows, dim, global_batch, warmup, steps))
        gc.collect()  # the case's table and slots go before the next case builds its own
    return {"num_replicas": strategy.num_replicas_in_sync, "cases": out}


def capacity(by: dict, layout: str, memory_bytes: int) -> dict:
    """Largest table (rows) `layout` holds with LazyAdam, from its smallest and largest measured cases.

    Bytes per row per worker is the growth between the two sizes, so the
    fixed runtime drops out: of the table + slot variables (the floor), of
    the RSS after the steps (what training holds) and of the peak RSS (what
    the build needs). On this machine each of the 2 workers gets half the RAM
    left after `HOST_RESERVE_BYTES`, less its runtime (RSS before the build);
    on GPUs each of `GPU_WORKERS` gets `GPU_BYTES - GPU_HEADROOM_BYTES` for
    variables, a shard's share shrinking as 1/workers.
    """
    sizes = sorted(rows for lay, rows in by if lay == layout)
    small, large = by[(layout, sizes[0])], by[(layout, sizes[-1])]
    grown = sizes[-1] - sizes[0]
    host_per_worker = (memory_bytes - HOST_RESERVE_BYTES) / 2 - large["rss_runtime_bytes"]
    out = {"measured_rows": [sizes[0], sizes[-1]]}
    for name, key in (("variables", "table_slot_bytes"), ("rss_after_steps", "rss_after_steps_bytes"),
                      ("build_peak", "peak_rss_bytes")):
        per_row = (large[key] - small[key]) / grown
        out[f"{name}_bytes_per_row_per_worker"] = per_row
        # None where it did not grow (--quick's shared processes keep one peak for all cases).
        out[f"host_rows_by_{name}"] = int(host_per_worker / per_row) if per_row > 0 else None
    host = [out[f"host_rows_by_{name}"] for name in ("variables", "rss_after_steps", "build_peak")]
    out["host_rows"] = min(r for r in host if r is not None)
    gpu_per_row = out["variables_bytes_per_row_per_worker"] * (2 / GPU_WORKERS if layout == "sharded" else 1)
    out["gpu_rows"] = int((GPU_BYTES - GPU_HEADROOM_BYTES) / gpu_per_row)
    return out


def predicted_peak_bytes(by: dict, layout: str, rows: int) -> float | None:
    """Per-worker peak RSS of (layout, rows), scaled from the largest smaller case measured (None: none yet)."""
    smaller = [r for lay, r in by if lay == layout and r < rows]
    if not smaller:
        return None
    m = by[(layout, max(smaller))]
    return m["rss_runtime_bytes"] + (m["peak_rss_bytes"] - m["rss_runtime_bytes"]) * rows / max(smaller)


def _rows_text(rows: float | None) -> str:
    if rows is None:
        return "not measured"
    return f"{rows / 1e9:.2f}B" if rows >= 1e9 else f"{rows / 1e6:.1f}M"


def _measure(group, kwargs, num_workers=2) -> list[dict]:
    """Runs `group` (a list of [layout, rows]) in one pair of worker processes; one measurement per case."""
    reports = multi_worker.launch(dict(kwargs, cases=group), num_workers=num_workers, target=f"{__name__}:worker")
    out = []
    for i, (layout, rows) in enumerate(group):
        per_worker = [r["cases"][i] for r in reports]
        # Per worker: the larger of the two (with an odd row count, worker 0's shard has one more row).
        largest = {key: max(c[key] for c in per_worker) for key in (
            "table_slot_bytes", "build_s", "rss_runtime_bytes", "rss_after_build_bytes", "rss_after_steps_bytes")}
        out.append(results.measurement(
            dict(layout=layout, rows=rows, dim=kwargs["dim"], global_batch=kwargs["global_batch"],
                 workers=num_workers, optimizer="lazy_adam", strategy="MultiWorkerMirroredStrategy"),
            per_worker[0]["repeats_s"], local_rows=per_worker[0]["local_rows"],
            unique_rows_per_worker_batch=per_worker[0]["unique_rows_per_worker_batch"], **largest,
            peak_rss_bytes=max(r["peak_rss_bytes"] for r in reports)))
    return out


def run(quick: bool, repeats: int | None = None, progress=None) -> dict:
    import psutil

    cfg = dict(QUICK if quick else FULL)
    if repeats:
        cfg["steps"] = repeats
    cases = [[layout, rows] for rows in cfg["rows"] for layout in LAYOUTS]
    kwargs = {k: cfg[k] for k in ("dim", "global_batch", "warmup", "steps")}
    groups = [[case] for case in cases] if cfg["fresh_processes"] else [cases]
    measurements, by, skipped = [], {}, []
    for group in groups:
        layout, rows = group[0]
        predicted = predicted_peak_bytes(by, layout, rows)
        available = psutil.virtual_memory().available
        if predicted is not None and 2 * predicted > available - HOST_RESERVE_BYTES:
            skipped.append(f"{layout} {step_time.size_label(rows)}: not run, its 2 workers' peak RSS would be "
                           f"~{2 * predicted / 1e9:.1f} GB (scaled from the largest smaller case) and only "
                           f"{available / 1e9:.1f} GB was available, {HOST_RESERVE_BYTES / GIB:.0f} GiB of it kept "
                           "for the OS")
            continue
        for m in _measure(group, kwargs):
            measurements.append(m)
            by[(m["params"]["layout"], m["params"]["rows"])] = m
            if progress:
                progress(f"{NAME} {m['params']['layout']} {step_time.size_label(m['params']['rows'])}")
    sharded = sorted(r for lay, r in by if lay == "sharded")
    both = sorted(r for r in sharded if ("mirrored", r) in by)
    # The step-time goal compares 10M with 1M rows (the sizes of the issue); --quick has only its own two.
    small, common = sharded[0], both[-1]
    large = GOAL_ROWS if GOAL_ROWS in sharded else sharded[-1]
    label = f"{step_time.size_label(large)}/{step_time.size_label(small)}"
    scaling = by[("sharded", large)]["median_s"] / by[("sharded", small)]["median_s"]
    bytes_ratio = by[("sharded", common)]["table_slot_bytes"] / by[("mirrored", common)]["table_slot_bytes"]
    ratios = {f"sharded step {label}": scaling}
    mirrored = sorted(r for lay, r in by if lay == "mirrored")
    if len(mirrored) > 1:
        ratios[f"mirrored step {step_time.size_label(mirrored[-1])}/{step_time.size_label(mirrored[0])}"] = (
            by[("mirrored", mirrored[-1])]["median_s"] / by[("mirrored", mirrored[0])]["median_s"])
    for rows in both:
        s, m = by[("sharded", rows)], by[("mirrored", rows)]
        at = f"@{step_time.size_label(rows)}"
        ratios[f"sharded/mirrored step {at}"] = s["median_s"] / m["median_s"]
        ratios[f"sharded/mirrored table+slot bytes per worker {at}"] = s["table_slot_bytes"] / m["table_slot_bytes"]
        ratios[f"sharded/mirrored RSS after build {at}"] = s["rss_after_build_bytes"] / m["rss_after_build_bytes"]
        ratios[f"sharded/mirrored peak RSS {at}"] = s["peak_rss_bytes"] / m["peak_rss_bytes"]
    memory_bytes = results.machine_info()["memory_bytes"]
    cap = {layout: capacity(by, layout, memory_bytes) for layout in LAYOUTS}
    scale_note = "" if not quick else (
        f"--quick measures {label} rows, where the table stays in the CPU caches; the goal is for the full run "
        f"({step_time.size_label(GOAL_ROWS)}/{step_time.size_label(FULL['rows'][0])})")
    goals = [results.goal(f"sharded_tables: sharded step @{label}", "<= 1.5", scaling, scaling <= 1.5, scale_note,
                          full_run_only=quick),
             results.goal(f"sharded_tables: sharded/mirrored table+slot bytes per worker "
                          f"@{step_time.size_label(common)}", "<= 0.55", bytes_ratio, bytes_ratio <= 0.55)]
    cap_text = "; ".join(
        f"{layout}: {_rows_text(c['host_rows'])} rows here (by variables alone "
        f"{_rows_text(c['host_rows_by_variables'])}, by RSS after steps {_rows_text(c['host_rows_by_rss_after_steps'])}, by the build's peak RSS "
        f"{_rows_text(c['host_rows_by_build_peak'])}), {_rows_text(c['gpu_rows'])} on {GPU_WORKERS} x 80 GB GPUs"
        for layout, c in cap.items())
    notes = skipped + [
        f"Capacity with LazyAdam (dim {cfg['dim']}, table + 2 slots), from each layout's per-worker bytes per row "
        f"between its smallest and largest measured size: {cap_text}. This machine: {memory_bytes / GIB:.1f} GiB "
        f"RAM, {HOST_RESERVE_BYTES / GIB:.0f} GiB kept for the OS, the rest split over the 2 workers, each also "
        "holding its runtime (RSS before the build); the smallest of the three bounds is the one stated. GPUs: "
        f"{GPU_WORKERS} workers, one 80 GB GPU each, {GPU_HEADROOM_BYTES / GIB:.0f} GiB of it kept for the CUDA "
        "context, allocator, activations and dense layers, the rest for the table and its slots (variable bytes; "
        f"a shard's share scales as 1/workers, 2 measured here, {GPU_WORKERS} there, a mirrored table's does not); "
        "the host memory of building the table there is not modelled.",
        (f"{len(cases)} cases, each in a fresh pair of processes" if cfg["fresh_processes"] else
         f"--quick: all {len(cases)} cases in one pair of processes, so the RSS of a case includes what the earlier "
         "ones left and the peak is the whole run's; the capacity above is only indicative") +
        f"; both workers share this machine's {os.cpu_count()} cores. Per-worker numbers are the larger worker's.",
    ]
    return results.benchmark(__doc__.splitlines()[0], measurements, ratios, goals, notes) | {"capacity": cap}
