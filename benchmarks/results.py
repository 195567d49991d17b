"""The results document: machine, versions, measurements, ratios and goals.

Schema (`results.json`):

    {"schema_version": 1, "quick": bool, "started": ISO time, "seconds": float,
     "machine": {"cpu_count", "cpu_model", "memory_bytes", "platform",
                 "loadavg_start", "loadavg_end"},
     "versions": {"python", "tensorflow", "keras", "numpy", "apache_beam", "embedopt"},
     "benchmarks": {name: {"description": str,
                           "measurements": [{"params": {...}, "repeats_s": [...],
                                             "median_s": float, "iqr_s": float, ...}],
                           "ratios": {name: float},
                           "goals": [{"name", "target", "measured", "met", "note",
                                      "full_run_only" (optional: a --quick goal not judged at quick sizes)}],
                           "notes": [str]}}}

A benchmark that failed has "error" instead of measurements. Times are
seconds; a ratio's name says which way it divides.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys

SCHEMA_VERSION = 1


def summarize(repeats_s) -> dict:
    """{"repeats_s", "median_s", "iqr_s", "min_s"} of per-repeat seconds."""
    values = [float(x) for x in repeats_s]
    if not values:
        raise ValueError("summarize: no repeats to summarize")
    if len(values) >= 2:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    else:
        q1 = q3 = values[0]
    return {"repeats_s": values, "median_s": statistics.median(values), "iqr_s": q3 - q1, "min_s": min(values)}


def measurement(params: dict, repeats_s, **extra) -> dict:
    """One measured configuration: its parameters, the repeats and their summary."""
    return {"params": dict(params), **summarize(repeats_s), **extra}


def goal(name: str, target: str, measured: float, met: bool, note: str = "", full_run_only: bool = False) -> dict:
    """One goal; `full_run_only` marks a goal whose target holds only at the full run's sizes (set it in --quick)."""
    out = {"name": name, "target": target, "measured": float(measured), "met": bool(met), "note": note}
    if full_run_only:
        out["full_run_only"] = True
    return out


NOT_JUDGED = "not judged in --quick (goal is for the full run's sizes)"


def judged(document: dict, goal_: dict) -> bool:
    """False for a `full_run_only` goal of a --quick run: its met/not met says nothing about the goal."""
    return not (document.get("quick") and goal_.get("full_run_only"))


def quick_note(quick_sizes: str, full_sizes: str) -> str:
    """The note of a `full_run_only` goal in --quick: what the quick run measured, and what the goal is for."""
    return f"not judged in --quick: it measures {quick_sizes}; the goal is for the full run's sizes ({full_sizes})"


def benchmark(description: str, measurements, ratios=None, goals=None, notes=None) -> dict:
    return {"description": description, "measurements": list(measurements), "ratios": dict(ratios or {}),
            "goals": list(goals or []), "notes": list(notes or [])}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def machine_info() -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_bytes": _memory_bytes(),
        "platform": platform.platform(),
        "loadavg_start": list(os.getloadavg()),
    }


def _version(module_name: str, distribution: str | None = None) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(distribution or module_name)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict:
    return {
        "python": sys.version.split()[0],
        "tensorflow": _version("tensorflow"),
        "keras": _version("keras"),
        "numpy": _version("numpy"),
        "apache_beam": _version("apache-beam"),
        "matplotlib": _version("matplotlib"),
        "embedopt": _version("embedopt"),
    }


def new_document(quick: bool) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "quick": bool(quick),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "versions": versions(),
        "benchmarks": {},
    }


def write(document: dict, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(document, f, indent=2, sort_keys=False)
        f.write("\n")
    os.replace(tmp, path)


def check_schema(document: dict) -> list[str]:
    """Problems with `document` against the schema above; empty when it conforms."""
    problems = []
    for key, kind in (("quick", bool), ("machine", dict), ("versions", dict), ("benchmarks", dict)):
        if not isinstance(document.get(key), kind):
            problems.append(f"{key}: expected {kind.__name__}")
    if problems:
        return problems
    for key in ("cpu_count", "cpu_model", "memory_bytes", "platform", "loadavg_start", "loadavg_end"):
        if key not in document["machine"]:
            problems.append(f"machine.{key} missing")
    for key in ("python", "tensorflow", "keras", "numpy", "apache_beam", "embedopt"):
        if key not in document["versions"]:
            problems.append(f"versions.{key} missing")
    for name, bench in document["benchmarks"].items():
        if "error" in bench:
            continue
        for key, kind in (("measurements", list), ("ratios", dict), ("goals", list)):
            if not isinstance(bench.get(key), kind):
                problems.append(f"{name}.{key}: expected {kind.__name__}")
        for i, m in enumerate(bench.get("measurements") or []):
            if not isinstance(m.get("params"), dict):
                problems.append(f"{name}.measurements[{i}].params missing")
            repeats = m.get("repeats_s")
            if not isinstance(repeats, list) or not repeats or not all(isinstance(x, float) for x in repeats):
                problems.append(f"{name}.measurements[{i}].repeats_s: expected a non-empty list of floats")
            for key in ("median_s", "iqr_s"):
                if not isinstance(m.get(key), float):
                    problems.append(f"{name}.measurements[{i}].{key}: expected float")
        for i, g in enumerate(bench.get("goals") or []):
            for key, kind in (("name", str), ("target", str), ("measured", float), ("met", bool), ("note", str)):
                if not isinstance(g.get(key), kind):
                    problems.append(f"{name}.goals[{i}].{key}: expected {kind.__name__}")
    return problems
