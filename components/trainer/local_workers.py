"""`embedopt train --local-workers N`: N local processes under MultiWorkerMirroredStrategy.

Each worker is this same command (minus `--local-workers`) with its own
`TF_CONFIG` on free localhost ports; worker 0 is the chief. Their output is
streamed line by line with a "[worker i] " prefix. When any worker exits
non-zero the others are stopped and the launcher fails naming it; when the
launcher is told to stop (SIGTERM, SIGINT, its timeout) it stops them all.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

GRACE_SECONDS = 10.0
TIMEOUT_EXIT_CODE = 124
LAUNCHER_PID_ENV = "EMBEDOPT_LAUNCHER_PID"
PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>


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


class _Stop(Exception):
    """Raised in the launcher's main thread by SIGTERM/SIGINT or the timeout: stop the workers."""

    def __init__(self, reason: str, exit_code: int):
        super().__init__(reason)
        self.exit_code = exit_code


def follow_launcher() -> None:
    """In a worker: have the kernel SIGKILL it when the launcher dies, even by SIGKILL (Linux only).

    SIGKILL, not SIGTERM: a worker past MultiWorkerMirroredStrategy's set-up
    survived the SIGTERM (the strategy's runtime handles that signal) and went
    on training and checkpointing as a child of PID 1. A launcher that stops on purpose
    stops its workers first (SIGTERM, then SIGKILL), so this signal only
    comes when the launcher was killed and can no longer stop them.

    Called first thing in the worker's main (a `preexec_fn` would do it before
    exec, but is unsafe once the launcher runs its output threads). The parent
    check afterwards closes the race with a launcher that died before.
    """
    launcher = os.environ.get(LAUNCHER_PID_ENV)
    if not launcher or sys.platform != "linux":
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != int(launcher):
        sys.exit(f"embedopt train: the launcher (pid {launcher}) is gone; not starting")


def stop_workers(procs: list[subprocess.Popen], grace_seconds: float) -> None:
    """SIGTERM every running worker, then SIGKILL those still running after `grace_seconds`."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace_seconds
    for p in procs:
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def launch(worker_argv: list[str], num_workers: int, out=None, poll_seconds: float = 0.2,
           timeout_seconds: float | None = None, grace_seconds: float = GRACE_SECONDS) -> int:
    """Runs `python -m components.cli train WORKER_ARGV` N times; returns 0 or a non-zero exit code.

    The workers never outlive the launcher: on a failed worker, SIGTERM,
    SIGINT or `timeout_seconds` the others get SIGTERM, then SIGKILL after
    `grace_seconds`; and each worker asks the kernel for SIGKILL should the
    launcher itself be killed. A signal gives 128 + its number, the timeout 124.
    """
    out = out or sys.stdout
    procs, threads = [], []
    failed, stopped = None, None

    def on_signal(signum, _frame):
        raise _Stop(f"received {signal.Signals(signum).name}", 128 + signum)

    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    deadline = None if timeout_seconds is None else time.monotonic() + timeout_seconds
    try:
        for index, config in enumerate(tf_configs(free_ports(num_workers))):
            env = dict(os.environ, TF_CONFIG=config, **{LAUNCHER_PID_ENV: str(os.getpid())})
            proc = subprocess.Popen(
                [sys.executable, "-m", "components.cli", "train", *worker_argv],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            )
            procs.append(proc)
            out.write(f"embedopt train: started worker {index} (pid {proc.pid})\n")
            out.flush()
            thread = threading.Thread(target=_pump, args=(proc.stdout, f"[worker {index}] ", out), daemon=True)
            thread.start()
            threads.append(thread)
        while failed is None and any(p.poll() is None for p in procs):
            failed = next((i for i, p in enumerate(procs) if p.poll() not in (None, 0)), None)
            if deadline is not None and time.monotonic() > deadline:
                raise _Stop(f"timed out after {timeout_seconds:g} s", TIMEOUT_EXIT_CODE)
            time.sleep(poll_seconds)
        if failed is None:
            failed = next((i for i, p in enumerate(procs) if p.returncode != 0), None)
    except _Stop as stop:
        stopped = stop
    finally:
        # A second signal while stopping must not cut the cleanup short.
        for sig in handlers:
            signal.signal(sig, signal.SIG_IGN)
        stop_workers(procs, grace_seconds)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        for t in threads:
            t.join(timeout=5)
    if stopped is not None:
        out.write(f"embedopt train: {stopped}; stopped the workers\n")
        out.flush()
        return stopped.exit_code
    if failed is not None:
        code = procs[failed].returncode
        out.write(f"embedopt train: worker {failed} failed with exit code {code}; stopped the other workers\n")
        out.flush()
        return code if code and code > 0 else 1
    return 0
