"""`embedopt bench` / `python -m benchmarks`: run the benchmarks, write results.json and plots.

Every comparison is measured side by side in one run; ratios are what
counts, absolute times vary between machines. Warm-up steps are excluded.
A goal that is not met is reported (with the reason found, where known),
never hidden by shrinking the workload. `--quick` runs a reduced set of
every benchmark in under two minutes, for checking that everything works;
its goals whose targets hold only at the full run's sizes are reported as
not judged (`full_run_only`), never as missed.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time

from benchmarks import findings, results
from components.cli import HelpFormatter, positive_int

PROG = "embedopt bench"
BENCHMARKS = ("fused_step", "bag_step", "step_time", "apply_bandwidth", "dense_parity", "preprocess_scaling", "input_pipeline",
              "memory", "multi_worker", "sharded_tables", "dynamic_tables")
NEEDS_WORKDIR = ("preprocess_scaling", "input_pipeline")


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown benchmark(s) {unknown or text!r}; choose from {', '.join(BENCHMARKS)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter, prog=PROG, description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    parser.add_argument("--quick", action="store_true",
                        help="reduced sizes and repeats (under 2 minutes); goals meant for the full run's sizes are "
                        "not judged")
    parser.add_argument("--output", default="bench-results", help="directory for results.json and the PNGs "
                        "(default: ./bench-results)")
    parser.add_argument("--only", type=_names, default=list(BENCHMARKS),
                        help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--repeats", type=positive_int, help="timed repeats per measurement (default: per benchmark)")
    parser.add_argument("--workdir", help="scratch directory for generated data (default: a temporary one, removed)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--verbose", "-v", action="store_true",
                   help="also print TensorFlow's start-up lines and the INFO logs of TensorFlow and Beam")
    return parser


def goals_table(document: dict) -> str:
    rows = [("goal", "target", "measured", "met")]
    for bench in document["benchmarks"].values():
        for g in bench.get("goals", []):
            met = ("yes" if g["met"] else "NO") if results.judged(document, g) else results.NOT_JUDGED
            rows.append((g["name"], g["target"], f"{g['measured']:.3g}", met))
    for name, bench in document["benchmarks"].items():
        if "error" in bench:
            rows.append((name, "-", "failed", "NO"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(args) -> dict:
    import importlib

    from tqdm import tqdm

    os.makedirs(args.output, exist_ok=True)
    document = results.new_document(args.quick)
    path = os.path.join(args.output, "results.json")
    workdir = args.workdir or tempfile.mkdtemp(prefix="embedopt-bench-")
    start = time.perf_counter()
    bar = tqdm(total=len(args.only), file=sys.stderr, disable=args.no_progress, unit="bench")
    try:
        for name in args.only:
            bar.set_description(name)
            module = importlib.import_module(f"benchmarks.{name}")
            kwargs = {"workdir": workdir} if name in NEEDS_WORKDIR else {}
            t0 = time.perf_counter()
            try:
                bench = module.run(args.quick, args.repeats, progress=bar.set_postfix_str, **kwargs)
            except Exception as err:  # noqa: BLE001 - one failed benchmark must not lose the others
                logging.exception("%s: benchmark %s failed", PROG, name)
                bench = {"description": module.__doc__.splitlines()[0], "error": f"{type(err).__name__}: {err}"[:4000]}
            bench["seconds"] = time.perf_counter() - t0
            findings.annotate(name, bench)
            document["benchmarks"][name] = bench
            document["machine"]["loadavg_end"] = list(os.getloadavg())
            document["seconds"] = time.perf_counter() - start
            results.write(document, path)
            bar.update(1)
    finally:
        bar.close()
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    from benchmarks import plots

    document["plots"] = [os.path.basename(p) for p in plots.plot_all(document, args.output)]
    results.write(document, path)
    return document


def main(argv: list[str] | None = None) -> int:
    from components.quiet import configure_logging, import_tensorflow

    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    import_tensorflow(args.verbose)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    document = run(args)
    machine = document["machine"]
    print(f"{PROG}: {'quick' if args.quick else 'full'} run, {machine['cpu_count']} CPUs ({machine['cpu_model']}), "
          f"load average {machine['loadavg_start'][0]:.2f} at start, {machine['loadavg_end'][0]:.2f} at end, "
          f"{document['seconds']:.0f} s")
    print(goals_table(document))
    print(f"{PROG}: wrote {os.path.join(args.output, 'results.json')} and {len(document['plots'])} plots")
    failed = [name for name, bench in document["benchmarks"].items() if "error" in bench]
    if failed:
        print(f"{PROG}: benchmark(s) failed: {', '.join(failed)} (see results.json)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
