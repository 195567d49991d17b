"""`python -m benchmarks.report RESULTS_JSON`: the goals and every ratio of a run as Markdown tables.

Used to write the README's Performance section from a committed run, so the
numbers there are the ones in docs/perf/results.json.
"""

from __future__ import annotations

import json
import sys

from benchmarks import results


def _fmt(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def goals_markdown(document: dict) -> str:
    lines = ["| goal | target | measured | met |", "|---|---|---|---|"]
    for bench in document["benchmarks"].values():
        for g in bench.get("goals", []):
            met = ("yes" if g["met"] else "**no**") if results.judged(document, g) else results.NOT_JUDGED
            lines.append(f"| {g['name']} | {g['target']} | {_fmt(g['measured'])} | {met} |")
    return "\n".join(lines)


def ratios_markdown(document: dict) -> str:
    lines = ["| benchmark | ratio | value |", "|---|---|---|"]
    for name, bench in document["benchmarks"].items():
        for key, value in bench.get("ratios", {}).items():
            lines.append(f"| {name} | {key} | {_fmt(value)} |")
    return "\n".join(lines)


def machine_line(document: dict) -> str:
    m, v = document["machine"], document["versions"]
    return (f"{m['cpu_count']} CPUs ({m['cpu_model']}), {m['memory_bytes'] / 2**30:.0f} GiB, {m['platform']}; "
            f"TensorFlow {v['tensorflow']}, Keras {v['keras']}, Beam {v['apache_beam']}; load average (1 min) "
            f"{m['loadavg_start'][0]:.2f} at start, {m['loadavg_end'][0]:.2f} at end; {document.get('seconds', 0):.0f} s")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m benchmarks.report RESULTS_JSON", file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as f:
        document = json.load(f)
    print(machine_line(document), goals_markdown(document), ratios_markdown(document), sep="\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
