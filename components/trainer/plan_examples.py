"""What the table planner chooses for the demo and an MLPerf-size model: `python -m components.trainer.plan_examples`.

demo: `embedopt demo`'s 26 hashed tables (components/demo.py `hash_buckets`
of the synthetic vocabularies), dim 16 + 1 wide column, LazyAdam (2 slots),
per_feature layout. mlperf: the 26 tables of MLPerf Training's DLRM-DCNv2
(Criteo 1TB, ids capped at 40M rows), dim 128, Adagrad (1 slot). Each at
N = 8 and 64 workers with 64 GiB per worker (an 80 GB accelerator less its
context, activations and exchange buffers). Pure: no TensorFlow.
"""

from __future__ import annotations

import argparse

from components.trainer import planner

# MLPerf DLRM-DCNv2's table rows (torchrec's Criteo 1TB num_embeddings_per_feature, max_ind_range 40M).
MLPERF_ROWS = (40_000_000, 39_060, 17_295, 7_424, 20_265, 3, 7_122, 1_543, 63, 40_000_000, 3_067_956, 405_282, 10,
               2_209, 11_938, 155, 4, 976, 14, 40_000_000, 40_000_000, 40_000_000, 590_152, 12_973, 108, 36)
MLPERF_GLOBAL_BATCH = 65_536
DEFAULT_BUDGET = "64Gi"
WORKERS = (8, 64)


def demo_tables(n: int) -> list[planner.Table]:
    """The demo's tables for N workers (its global batch of 256, one id per feature)."""
    from components.demo import BATCH_SIZE, hash_buckets
    from components.preprocess.synth_truth import SynthConfig

    dim = 16 + 1
    return [planner.Table(f"table_cat_{i}", rows, dim, planner.slot_columns("lazy_adam", dim), BATCH_SIZE // n)
            for i, rows in enumerate(hash_buckets(SynthConfig().vocab_sizes))]


def mlperf_tables(n: int) -> list[planner.Table]:
    """MLPerf's tables for N workers: global batch 65,536, each feature's multi-hot bag size ids per example."""
    from components.preprocess.synth_truth import MLPERF_BAG_SIZES

    local = MLPERF_GLOBAL_BATCH // n
    return [planner.Table(f"table_cat_{i}", rows, 128, planner.slot_columns("adagrad", 128), local * bag)
            for i, (rows, bag) in enumerate(zip(MLPERF_ROWS, MLPERF_BAG_SIZES))]


def example_plans(budget: int, workers=WORKERS) -> dict[str, dict[int, planner.Plan]]:
    """{model: {N: plan}} for the demo and the MLPerf-size model."""
    return {name: {n: planner.plan_tables(tables(n), n, budget) for n in workers}
            for name, tables in (("demo", demo_tables), ("mlperf", mlperf_tables))}


def summary(plan: planner.Plan) -> dict:
    """Counts per placement and the most bytes any worker holds, for a benchmark's JSON."""
    counts = {p: sum(t.placement == p for t in plan.tables) for p in planner.PLACEMENTS}
    return {"placements": counts, "max_worker_bytes": max(plan.worker_bytes()),
            "step_bytes_per_worker": sum(t.step_bytes for t in plan.tables),
            "owners": sorted({t.owner for t in plan.tables if t.owner is not None})}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory-budget-per-worker", default=DEFAULT_BUDGET, type=planner.parse_budget,
                        help=f"bytes of tables and slots per worker (default {DEFAULT_BUDGET})")
    parser.add_argument("--workers", default=",".join(map(str, WORKERS)),
                        help="comma-separated worker counts (default 8,64)")
    args = parser.parse_args(argv)
    workers = [int(n) for n in args.workers.split(",")]
    for name, plans in example_plans(args.memory_budget_per_worker, workers).items():
        for n, plan in plans.items():
            print(f"== {name} model, N = {n}")
            print(plan.describe())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
