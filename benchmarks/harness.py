"""Timing and child processes shared by the benchmarks.

Table-sized cases run in a child process (`run_child`): the memory of one
case cannot leak into the next, and the child reports its own peak RSS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

CHILD_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow"}


class ChildError(RuntimeError):
    """A benchmark child process failed; the message ends with its stderr."""


def time_calls(fn, warmup: int, repeats: int) -> list[float]:
    """Seconds per call of `fn(i)` after `warmup` untimed calls.

    `fn` must block until its work is done (e.g. end with `.numpy()`).
    """
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(warmup + i)
        times.append(time.perf_counter() - start)
    return times


def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss_bytes() -> int:
    """This process's peak resident set size (VmHWM)."""
    peak = _status_bytes("VmHWM")
    if peak is None:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return peak


def current_rss_bytes() -> int | None:
    """This process's resident set size now (VmRSS); None where /proc is missing."""
    return _status_bytes("VmRSS")


def run_child(target: str, kwargs: dict, timeout: float = 1800, env: dict | None = None,
              python: str | None = None) -> dict:
    """Runs `module:function(**kwargs)` in a fresh Python (`python`, default this one); returns its dict plus
    `peak_rss_bytes`."""
    with tempfile.TemporaryDirectory(prefix="embedopt-bench-") as tmp:
        out = os.path.join(tmp, "result.json")
        child_env = {**os.environ, **CHILD_ENV, **(env or {})}
        proc = subprocess.run(
            [python or sys.executable, "-m", "benchmarks._child", target, json.dumps(kwargs), out],
            env=child_env, capture_output=True, text=True, timeout=timeout,
        )
        if proc.returncode != 0 or not os.path.exists(out):
            raise ChildError(f"{target}({kwargs}) exited with {proc.returncode}:\n{proc.stderr[-3000:]}")
        with open(out, encoding="utf-8") as f:
            return json.load(f)
