"""Progress of a preprocess run, across worker processes.

Beam runs the work in worker processes (or machines) that cannot draw on
the user's terminal, so each input range writes a tiny file `NAME` =
"bytes lines" into a progress folder every second or so, and a thread in the
driver (`ProgressMonitor`) sums them: a tqdm bar with rows/s on a terminal,
a log line every `log_every` seconds otherwise. Progress is best-effort: a
write that fails is ignored, and a runner whose workers cannot reach the
folder simply shows none.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

_WRITE_EVERY = 1.0

log = logging.getLogger(__name__)


class ProgressWriter:
    """Worker side: `update(bytes_done, lines_done)`; writes at most once a second (and at the end)."""

    def __init__(self, folder: str | None, name: str):
        self._path = os.path.join(folder, name) if folder else None
        self._last = 0.0

    def update(self, done_bytes: int, done_lines: int, final: bool = False) -> None:
        now = time.monotonic()
        if self._path is None or (not final and now - self._last < _WRITE_EVERY):
            return
        self._last = now
        try:
            tmp = f"{self._path}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="ascii") as f:
                f.write(f"{done_bytes} {done_lines}")
            os.replace(tmp, self._path)
        except OSError:
            pass


def read_progress(folder: str) -> tuple[int, int]:
    """(bytes, lines) summed over the progress files in `folder`."""
    total_bytes = total_lines = 0
    try:
        names = [n for n in os.listdir(folder) if not n.endswith(".tmp")]
    except OSError:
        return 0, 0
    for name in names:
        try:
            with open(os.path.join(folder, name), encoding="ascii") as f:
                done_bytes, done_lines = f.read().split()
            total_bytes, total_lines = total_bytes + int(done_bytes), total_lines + int(done_lines)
        except (OSError, ValueError):
            continue
    return total_bytes, total_lines


class ProgressMonitor:
    """Driver side: a context manager that shows the progress files' sum until the run ends.

    `total_bytes` is the input size times the number of passes over it
    (2 with a vocabulary: one to count values, one to encode).
    """

    def __init__(self, folder: str, total_bytes: int, passes: int, *, bar: bool | None = None, log_every: float = 10.0,
                 poll: float = 0.5):
        self._folder = folder
        self._total = max(1, total_bytes * passes)
        self._passes = passes
        self._bar = sys.stderr.isatty() if bar is None else bar
        self._log_every = log_every
        self._poll = poll
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="preprocess-progress", daemon=True)

    def __enter__(self):
        os.makedirs(self._folder, exist_ok=True)
        self._start = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        bar = None
        if self._bar:
            from tqdm import tqdm

            bar = tqdm(total=self._total, unit="B", unit_scale=True, file=sys.stderr, desc="preprocess",
                       dynamic_ncols=True, bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}B/{total_fmt}B "
                       "[{elapsed}<{remaining}{postfix}]")
        last_log = time.monotonic()
        while True:
            stopped = self._stop.wait(self._poll)
            done_bytes, lines = read_progress(self._folder)
            seconds = max(time.monotonic() - self._start, 1e-9)
            # Lines are counted once per pass; rows/s is the rate at which input rows get through the whole job.
            rows_per_second = lines / self._passes / seconds
            if bar is not None:
                bar.n = min(done_bytes, self._total)
                bar.set_postfix_str(f"{rows_per_second:,.0f} rows/s", refresh=True)
            elif time.monotonic() - last_log >= self._log_every or stopped:
                last_log = time.monotonic()
                log.info("preprocess: %.0f%% of the input (%d passes), %s rows/s", 100 * done_bytes / self._total,
                         self._passes, f"{rows_per_second:,.0f}")
            if stopped:
                break
        if bar is not None:
            bar.close()
