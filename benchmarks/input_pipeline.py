"""Item 4: examples/s of the TFRecord reader against the trainer's examples/s.

Reader: `components.preprocess.reader.make_dataset` over the preprocess
output (GZIP TFRecords, shuffle, batch, parse, prefetch), iterated alone.
Trainer: `components.trainer.run_fn` on the same files with its defaults
(DLRM, LazyAdam tables, Adam dense layers), which reads through the same
reader; its examples/s is the global batch over its mean step time (first
step left out). Both run in child processes, one after the other.
"""

from __future__ import annotations

import os
import time

from benchmarks import data, harness, results

NAME = "input_pipeline"
FULL = dict(rows=50_000, batch=1024, reader_batches=20, reader_blocks=10, train_steps=150, trainer_runs=2)
QUICK = dict(rows=2_000, batch=256, reader_batches=5, reader_blocks=3, train_steps=15, trainer_runs=1)


def reader_seconds(data_dir: str, batch: int, batches: int, blocks: int) -> dict:
    """Child process body: seconds per block of `batches` batches, after one warm-up block."""
    from components.preprocess.metadata import ExamplesLayout
    from components.preprocess.reader import make_dataset

    layout = ExamplesLayout(data_dir)
    # Seeded like the trainer's, whose input order is then deterministic (exact resume).
    dataset = make_dataset(layout.train_pattern, layout.metadata(), batch, seed=0)
    iterator = iter(dataset)

    def block(_):
        for _ in range(batches):
            next(iterator)

    return {"repeats_s": harness.time_calls(block, 1, blocks)}


def trainer_step_seconds(data_dir: str, batch: int, train_steps: int, run_dir: str) -> dict:
    """Child process body: one `run_fn` run; its mean step time."""
    import shutil

    from components.preprocess.metadata import ExamplesLayout
    from components.trainer.fn_args import TrainerConfig, fn_args_for
    from components.trainer.run import run_fn

    shutil.rmtree(run_dir, ignore_errors=True)  # a run left in a reused --workdir would resume, not train

    config = TrainerConfig(batch_size=batch, progress=False, log_every=max(1, train_steps // 3))
    fn_args = fn_args_for(ExamplesLayout(data_dir), run_dir, config, train_steps, eval_steps=1)
    start = time.perf_counter()
    metrics = run_fn(fn_args)
    return {"mean_step_seconds": metrics["mean_step_seconds"], "wall_seconds": time.perf_counter() - start,
            "optimizer": metrics.get("config", {}).get("optimizer")}


def run(quick: bool, repeats: int | None = None, progress=None, workdir: str = ".") -> dict:
    cfg = QUICK if quick else FULL
    data_dir = data.preprocessed(workdir, cfg["rows"]).root
    reader = harness.run_child(f"{__name__}:reader_seconds", dict(
        data_dir=data_dir, batch=cfg["batch"], batches=cfg["reader_batches"], blocks=repeats or cfg["reader_blocks"]))
    reader_m = results.measurement(dict(kind="reader", batch=cfg["batch"], batches_per_repeat=cfg["reader_batches"]),
                                   reader["repeats_s"])
    reader_m["examples_per_s"] = cfg["batch"] * cfg["reader_batches"] / reader_m["median_s"]
    if progress:
        progress(f"{NAME} reader")
    runs = [harness.run_child(f"{__name__}:trainer_step_seconds", dict(
        data_dir=data_dir, batch=cfg["batch"], train_steps=cfg["train_steps"],
        run_dir=os.path.join(workdir, f"trainer-run-{i}"))) for i in range(cfg["trainer_runs"])]
    trainer_m = results.measurement(dict(kind="trainer", batch=cfg["batch"], train_steps=cfg["train_steps"],
                                         optimizer=runs[0]["optimizer"]),
                                    [r["mean_step_seconds"] for r in runs])
    trainer_m["examples_per_s"] = cfg["batch"] / trainer_m["median_s"]
    ratio = reader_m["examples_per_s"] / trainer_m["examples_per_s"]
    goals = [results.goal("input_pipeline: reader examples/s / trainer examples/s", ">= 3", ratio, ratio >= 3)]
    notes = ["trainer repeats_s are per-run mean step times (run_fn reports the mean of its steps)."]
    return results.benchmark(__doc__.splitlines()[0], [reader_m, trainer_m],
                             {"reader/trainer examples/s": ratio,
                              "reader examples/s": reader_m["examples_per_s"],
                              "trainer examples/s": trainer_m["examples_per_s"]}, goals, notes)
