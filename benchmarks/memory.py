"""Item 6: peak RSS and slot bytes per optimizer at 4M rows.

Each optimizer trains `SparseEmbedding(rows, 32)` for a few steps of the
item-1 model in its own child process, which reports its peak resident set
size (VmHWM), its resident set after the steps (VmRSS: runtime, table,
slots, cached buffers) and the bytes of the optimizer's table-shaped slots.
The peak is set while the table is initialized (the Keras initializer makes
table-sized temporaries), so the slot savings show in the steady-state RSS. `sgd` has
no slots and is the baseline; the Keras `Embedding` + `Adam` pair is shown
for reference.
"""

from __future__ import annotations

import numpy as np

from benchmarks import harness, results, step_time

NAME = "memory"
OPTIMIZERS = ("sgd", "momentum", "adagrad", "rowwise_adagrad", "lazy_adam", "adamw", "ftrl")
FULL = dict(rows=4_000_000, dim=32, batch=4096, optimizers=list(OPTIMIZERS), keras_reference=True, steps=3)
QUICK = dict(rows=100_000, dim=32, batch=512, optimizers=["adagrad", "rowwise_adagrad"],
             keras_reference=False, steps=2)


def train_a_few_steps(pair: str, optimizer: str, rows: int, dim: int, batch: int, steps: int) -> dict:
    """Child process body."""
    step, opt = step_time.build_step(pair, rows, dim, optimizer)
    batches, _ = step_time.make_batches(rows, batch, 26, count=2)
    times = harness.time_calls(lambda i: step(*batches[i % 2]).numpy(), 1, steps)
    slot_bytes = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
                     for v in opt.variables if len(v.shape) >= 1 and v.shape[0] == rows)
    return {"repeats_s": times, "slot_bytes": slot_bytes, "table_bytes": rows * dim * 4,
            "rss_after_steps_bytes": harness.current_rss_bytes()}


def run(quick: bool, repeats: int | None = None, progress=None) -> dict:
    cfg = QUICK if quick else FULL
    cases = [("ours", name) for name in cfg["optimizers"]]
    if cfg["keras_reference"]:
        cases.append(("keras", "lazy_adam"))
    measurements = []
    for pair, name in cases:
        child = harness.run_child(f"{__name__}:train_a_few_steps", dict(
            pair=pair, optimizer=name, rows=cfg["rows"], dim=cfg["dim"], batch=cfg["batch"], steps=repeats or cfg["steps"]))
        label = name if pair == "ours" else "keras Embedding + keras Adam"
        m = results.measurement(dict(pair=pair, optimizer=label, rows=cfg["rows"], dim=cfg["dim"]), child["repeats_s"])
        m.update(peak_rss_bytes=child["peak_rss_bytes"], rss_after_steps_bytes=child["rss_after_steps_bytes"],
                 slot_bytes=child["slot_bytes"], table_bytes=child["table_bytes"])
        measurements.append(m)
        if progress:
            progress(f"{NAME} {label}")
    by = {m["params"]["optimizer"]: m for m in measurements}
    ratios = {f"{k}: peak RSS GB": v["peak_rss_bytes"] / 1e9 for k, v in by.items()}
    ratios.update({f"{k}: RSS after steps GB": (v["rss_after_steps_bytes"] or 0) / 1e9 for k, v in by.items()})
    ratios.update({f"{k}: slot bytes / table bytes": v["slot_bytes"] / v["table_bytes"] for k, v in by.items()})
    goals = []
    if "rowwise_adagrad" in by and "adagrad" in by:
        slot_ratio = by["rowwise_adagrad"]["slot_bytes"] / by["adagrad"]["slot_bytes"]
        ratios["rowwise_adagrad/adagrad slot bytes"] = slot_ratio
        ratios["rowwise_adagrad/adagrad peak RSS"] = by["rowwise_adagrad"]["peak_rss_bytes"] / by["adagrad"]["peak_rss_bytes"]
        if by["adagrad"]["rss_after_steps_bytes"]:
            ratios["rowwise_adagrad/adagrad RSS after steps"] = (by["rowwise_adagrad"]["rss_after_steps_bytes"]
                                                                 / by["adagrad"]["rss_after_steps_bytes"])
        goals.append(results.goal("memory: rowwise_adagrad slot bytes / adagrad slot bytes", f"<= 1/{cfg['dim']}",
                                  slot_ratio, slot_ratio <= 1 / cfg["dim"] + 1e-9))
    notes = ["RSS includes the TensorFlow runtime and buffers, not only the variables; the peak comes from the "
             "table's initialization (the Keras initializer builds table-sized temporaries before the variable "
             "takes its value), so it hides the slots; compare the RSS after the steps."]
    return results.benchmark(__doc__.splitlines()[0], measurements, ratios, goals, notes)
