"""`embedopt train --local-workers N`: N local processes under MultiWorkerMirroredStrategy.

Each worker is this same command (minus `--local-workers`) with its own
`TF_CONFIG` on free localhost ports; worker 0 is the chief. Their output is
streamed line by line with a "[worker i] " prefix. When any worker exits
non-zero the others are stopped and the launcher fails naming it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time


def free_ports(n: int) -> list[int]:
    """n distinct ports that were free on 127.0.0.1 a moment ago."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_configs(ports: list[int]) -> list[str]:
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}) for i in range(len(ports))]


def _pump(stream, prefix: str, out) -> None:
    for line in iter(stream.readline, ""):
        out.write(prefix + line)
        out.flush()
    stream.close()


def launch(worker_argv: list[str], num_workers: int, out=None, poll_seconds: float = 0.2) -> int:
    """Runs `python -m components.trainer.cli WORKER_ARGV` N times; returns 0 or the failing exit code."""
    out = out or sys.stdout
    procs, threads = [], []
    for index, config in enumerate(tf_configs(free_ports(num_workers))):
        env = dict(os.environ, TF_CONFIG=config)
        proc = subprocess.Popen(
            [sys.executable, "-m", "components.trainer.cli", *worker_argv],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        )
        procs.append(proc)
        thread = threading.Thread(target=_pump, args=(proc.stdout, f"[worker {index}] ", out), daemon=True)
        thread.start()
        threads.append(thread)
    failed = None
    try:
        while failed is None and any(p.poll() is None for p in procs):
            failed = next((i for i, p in enumerate(procs) if p.poll() not in (None, 0)), None)
            time.sleep(poll_seconds)
        if failed is None:
            failed = next((i for i, p in enumerate(procs) if p.returncode != 0), None)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for t in threads:
            t.join(timeout=5)
    if failed is not None:
        code = procs[failed].returncode
        out.write(f"embedopt train: worker {failed} failed with exit code {code}; stopped the other workers\n")
        out.flush()
        return code if code and code > 0 else 1
    return 0
