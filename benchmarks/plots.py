"""One small PNG per benchmark (matplotlib, Agg backend; the `bench` extra)."""

from __future__ import annotations

import os

from benchmarks.step_time import size_label

DPI = 100


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    _pyplot().close(fig)


def _bars(ax, labels, values, title, ylabel, goal=None, goal_label=None):
    ax.bar(range(len(values)), values, color="#4c72b0")
    ax.set_xticks(range(len(values)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel, fontsize=9)
    if goal is not None:
        ax.axhline(goal, color="#c44e52", linestyle="--", linewidth=1, label=goal_label)
        ax.legend(fontsize=8)


def plot_step_time(bench, path):
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    ms = [m for m in bench["measurements"]
          if not m["params"]["jit_compile"] and m["params"].get("nonfinite", "raise") == "raise"]
    optimizers = sorted({m["params"]["optimizer"] for m in ms})
    for opt in optimizers:
        for pair, style in (("ours", "-o"), ("keras", "--x")):
            pts = sorted((m["params"]["rows"], 1000 * m["median_s"]) for m in ms
                         if m["params"]["optimizer"] == opt and m["params"]["pair"] == pair)
            if pts and (pair == "ours" or opt == "lazy_adam"):
                left.plot(*zip(*pts), style, markersize=3, label=f"{pair} {opt}" if pair == "ours" else "keras Adam")
        ratio = sorted((m["params"]["rows"], k["median_s"] / m["median_s"]) for m in ms for k in ms
                       if m["params"]["optimizer"] == opt and m["params"]["pair"] == "ours"
                       and k["params"]["optimizer"] == opt and k["params"]["pair"] == "keras"
                       and k["params"]["rows"] == m["params"]["rows"])
        if ratio:
            right.plot(*zip(*ratio), "-o", markersize=3, label=opt)
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("table rows", fontsize=9)
        rows = sorted({m["params"]["rows"] for m in ms})
        ax.set_xticks(rows, [size_label(r) for r in rows])
        ax.minorticks_off()
    left.set_ylabel("median step time (ms)", fontsize=9)
    left.set_title("step time vs table rows", fontsize=10)
    left.legend(fontsize=6, ncol=2)
    right.axhline(20, color="#c44e52", linestyle="--", linewidth=1, label="goal 20x")
    right.set_ylabel("keras built-in / ours", fontsize=9)
    right.set_title("speed-up over Keras Embedding + built-in", fontsize=10)
    right.legend(fontsize=6, ncol=2)
    _save(fig, path)


def plot_apply_bandwidth(bench, path):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    ms = [m for m in bench["measurements"] if "bandwidth_GBps" in m]
    labels = [m["params"].get("optimizer", m["params"]["case"]) for m in ms]
    copy = next(m["bandwidth_GBps"] for m in ms if m["params"]["case"] == "memcpy")
    _bars(ax, labels, [m["bandwidth_GBps"] for m in ms], "sparse apply: effective bandwidth", "GB/s",
          0.5 * copy, "goal: 50% of memcpy")
    _save(fig, path)


def plot_dense_parity(bench, path):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ms = bench["measurements"]
    _bars(ax, [f"{m['params']['optimizer']} {m['params']['timed']}" for m in ms], [1000 * m["median_s"] for m in ms],
          "dense MLP: our Adam vs keras Adam", "median ms")
    _save(fig, path)


def plot_input_pipeline(bench, path):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    ms = bench["measurements"]
    trainer = next(m["examples_per_s"] for m in ms if m["params"]["kind"] == "trainer")
    _bars(ax, [m["params"]["kind"] for m in ms], [m["examples_per_s"] for m in ms], "reader vs trainer",
          "examples/s", 3 * trainer, "goal: 3x trainer")
    _save(fig, path)


def plot_preprocess_scaling(bench, path):
    plt = _pyplot()
    fig, (ax_rate, ax_rss) = plt.subplots(1, 2, figsize=(9, 3.6))
    ms = bench["measurements"]
    labels = [f"{size_label(m['params']['rows'])} {m['params']['mode']} {m['params']['workers']}w" for m in ms]
    _bars(ax_rate, labels, [m["rows_per_s"] for m in ms], "preprocess rows/s (DirectRunner)", "rows/s",
          25_000, "goal (2 workers)")
    _bars(ax_rss, labels, [m["peak_tree_rss_bytes"] / 1e9 for m in ms], "peak RSS, whole process tree", "GB",
          2.0, "goal")
    for ax in (ax_rate, ax_rss):
        ax.tick_params(axis="x", labelrotation=35, labelsize=7)
    _save(fig, path)


def plot_memory(bench, path):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    ms = bench["measurements"]
    labels = [m["params"]["optimizer"].replace("keras Embedding + keras Adam", "keras Adam") for m in ms]
    x = range(len(ms))
    ax.bar([i - 0.27 for i in x], [m["peak_rss_bytes"] / 1e9 for m in ms], 0.27, label="peak RSS")
    ax.bar(list(x), [(m.get("rss_after_steps_bytes") or 0) / 1e9 for m in ms], 0.27, label="RSS after steps")
    ax.bar([i + 0.27 for i in x], [m["slot_bytes"] / 1e9 for m in ms], 0.27, label="slot bytes")
    ax.set_xticks(list(x), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("GB", fontsize=9)
    ax.set_title(f"memory at {size_label(ms[0]['params']['rows'])} rows x {ms[0]['params']['dim']}", fontsize=10)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_multi_worker(bench, path):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    ms = bench["measurements"]
    _bars(ax, [size_label(m["params"]["rows"]) for m in ms], [1000 * m["median_s"] for m in ms],
          "2 workers, MultiWorkerMirroredStrategy", "median step ms", 1.5 * 1000 * ms[0]["median_s"],
          "goal: 1.5x smallest")
    _save(fig, path)


def plot_sharded_tables(bench, path):
    plt = _pyplot()
    fig, (ax_step, ax_mem) = plt.subplots(1, 2, figsize=(10, 3.8))
    ms = bench["measurements"]
    rows = sorted({m["params"]["rows"] for m in ms})
    x = range(len(rows))
    colors = {"sharded": "#4c72b0", "mirrored": "#dd8452"}
    for offset, layout in ((-0.2, "sharded"), (0.2, "mirrored")):
        by = {m["params"]["rows"]: m for m in ms if m["params"]["layout"] == layout}
        pos = [i + offset for i, r in enumerate(rows) if r in by]
        ax_step.bar(pos, [1000 * by[r]["median_s"] for r in rows if r in by], 0.4, color=colors[layout], label=layout)
        for key, style, what in (("table_slot_bytes", "-o", "table + slots"), ("rss_after_steps_bytes", "--s",
                                 "RSS after steps"), ("peak_rss_bytes", ":^", "peak RSS")):
            pts = [(r, by[r][key] / 1e9) for r in rows if r in by]
            ax_mem.plot(*zip(*pts), style, color=colors[layout], markersize=4, label=f"{layout} {what}")
    small = next(m for m in ms if m["params"]["layout"] == "sharded" and m["params"]["rows"] == rows[0])
    ax_step.axhline(1.5 * 1000 * small["median_s"], color="#c44e52", linestyle="--", linewidth=1,
                    label=f"goal: sharded <= 1.5x sharded @{size_label(rows[0])}")
    ax_step.set_xticks(list(x), [size_label(r) for r in rows])
    ax_step.set_xlabel("table rows", fontsize=9)
    ax_step.set_ylabel("median step ms", fontsize=9)
    ax_step.set_title("2 workers: step time (missing bar = not run, see notes)", fontsize=10)
    ax_step.legend(fontsize=7)
    ax_mem.set_xscale("log")
    ax_mem.set_xticks(rows, [size_label(r) for r in rows])
    ax_mem.minorticks_off()
    ax_mem.set_xlabel("table rows", fontsize=9)
    ax_mem.set_ylabel("GB per worker", fontsize=9)
    ax_mem.set_title("per worker: table + slots, RSS after steps, peak RSS", fontsize=10)
    ax_mem.legend(fontsize=6, ncol=2)
    _save(fig, path)


def plot_fused_step(bench, path):
    """Grouped bars per optimizer: TF-ops path, fused kernel, and the peer where it was measured."""
    plt = _pyplot()
    ms = {(m["params"]["optimizer"], m["params"]["path"]): 1000 * m["median_s"] for m in bench["measurements"]}
    optimizers = [o for o in dict.fromkeys(m["params"]["optimizer"] for m in bench["measurements"])]
    paths = [("tf_ops", "embedopt, TF ops", "#8c8c8c"), ("fused", "embedopt, fused kernel", "#4c72b0"),
             ("peer", "TorchRec fbgemm / torch SparseAdam", "#dd8452")]
    fig, ax = plt.subplots(figsize=(10, 3.8))
    width = 0.27
    for k, (path_name, label, color) in enumerate(paths):
        xs = [i + (k - 1) * width for i, o in enumerate(optimizers) if (o, path_name) in ms]
        ys = [ms[(o, path_name)] for o in optimizers if (o, path_name) in ms]
        if xs:
            ax.bar(xs, ys, width, label=label, color=color)
    params = bench["measurements"][0]["params"]
    bags = "features" in params  # bag_step: each optimizer against its own peer, no common line
    if ("sgd", "peer") in ms and not bags:
        ax.axhline(ms[("sgd", "peer")], color="#c44e52", linestyle="--", linewidth=1, label="goal: fbgemm's SGD step")
    ax.set_xticks(range(len(optimizers)), optimizers, rotation=20, ha="right", fontsize=8)
    workload = (f"{params['features']} bags of 0..{2 * params['mean_bag']} Zipf ids per example" if bags
                else f"{params['ids_per_example']} Zipf ids")
    ax.set_title(f"one step, {params['rows']:,} x {params['dim']} table, batch {params['batch']} x "
                 f"{workload}, {params['threads']} threads", fontsize=10)
    ax.set_ylabel("ms per step (median)", fontsize=9)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_dynamic_tables(bench, path):
    """Left: step time, fixed vs dynamic table, per stream. Right: AUC per period on the drifting stream."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    steps = [m for m in bench["measurements"] if "stream" in m["params"]]
    streams = list(dict.fromkeys(m["params"]["stream"] for m in steps))
    ms = {(m["params"]["stream"], m["params"]["table"]): 1000 * m["median_s"] for m in steps}
    for k, (table, color) in enumerate((("fixed", "#8c8c8c"), ("dynamic", "#4c72b0"))):
        left.bar([i + (k - 0.5) * 0.4 for i in range(len(streams))], [ms[(s, table)] for s in streams], 0.4,
                 label=f"{table} table", color=color)
    left.set_xticks(range(len(streams)), streams, fontsize=8)
    params = steps[0]["params"]
    left.set_title(f"step, {params['capacity']:,} x {params['dim']} rows, batch {params['batch']} x "
                   f"{params['ids_per_example']}, LazyAdam", fontsize=10)
    left.set_ylabel("ms per step (median)", fontsize=9)
    left.legend(fontsize=8)
    quality = next(m for m in bench["measurements"] if m["params"].get("part") == "quality")
    curves = quality["auc"]
    periods = range(2, len(curves["bayes"]) + 2)
    for name, style in (("dynamic", "-o"), ("hashed", "-s"), ("vocabulary", "-^"), ("bayes", "--")):
        right.plot(periods, curves[name], style, markersize=3, label="Bayes (planted weights)" if name == "bayes"
                   else f"{name} ({curves['rows']:,} rows)")
    right.set_xticks(list(periods))
    right.set_xlabel("period (evaluated before training on it)", fontsize=9)
    right.set_ylabel("AUC", fontsize=9)
    right.set_title("drifting ids: same memory, online training", fontsize=10)
    right.legend(fontsize=7)
    _save(fig, path)


PLOTTERS = {
    "fused_step": plot_fused_step,
    "bag_step": plot_fused_step,
    "step_time": plot_step_time,
    "apply_bandwidth": plot_apply_bandwidth,
    "dense_parity": plot_dense_parity,
    "input_pipeline": plot_input_pipeline,
    "preprocess_scaling": plot_preprocess_scaling,
    "memory": plot_memory,
    "multi_worker": plot_multi_worker,
    "sharded_tables": plot_sharded_tables,
    "dynamic_tables": plot_dynamic_tables,
}


def plot_all(document: dict, output_dir: str) -> list[str]:
    """Writes `<name>.png` for every benchmark that has measurements; returns the paths."""
    paths = []
    for name, bench in document["benchmarks"].items():
        if name in PLOTTERS and bench.get("measurements"):
            path = os.path.join(output_dir, f"{name}.png")
            PLOTTERS[name](bench, path)
            paths.append(path)
    return paths
