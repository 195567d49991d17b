"""One writer per output: a lock file holding the owner's pid and host.

Two `preprocess` or two `train` runs into the same output would both report
success while the last writer silently replaces the other's results. Each
run takes `OutputLock(path)` first: the lock file is created atomically
(O_CREAT | O_EXCL) and holds {"pid", "host", "started", "command"}. A second
run refuses with a message naming the owner. A lock left by a process that
no longer exists on this host is stale: it is replaced, with a warning. A
lock from another host cannot be checked from here, so the message says how
to remove it when no run is active.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import sys
import time

log = logging.getLogger(__name__)


class LockedError(RuntimeError):
    """Another live run holds the lock."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputLock:
    """Context manager: holds `path` (the lock file) for the duration of a run."""

    def __init__(self, path: str, what: str):
        self.path = path
        self._what = what
        self._held = False
        self._made_folder = False

    def _owner(self) -> dict:
        try:
            with open(self.path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def acquire(self) -> None:
        folder = os.path.dirname(os.path.abspath(self.path))
        self._made_folder = not os.path.exists(folder)
        os.makedirs(folder, exist_ok=True)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "command": " ".join(sys.argv)[:500]}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except OSError as err:
                if err.errno != errno.EEXIST:
                    raise
                owner = self._owner()
                if owner.get("host") == record["host"] and isinstance(owner.get("pid"), int) and not _alive(owner["pid"]):
                    log.warning("removing the stale lock %s of process %d, which no longer runs", self.path,
                                owner["pid"])
                    os.unlink(self.path)
                    continue
                who = f"process {owner.get('pid', '?')} on {owner.get('host', '?')} since {owner.get('started', '?')}"
                raise LockedError(
                    f"{self._what} is in use by another run ({who}); wait for it to finish, or, if no run is "
                    f"active, delete the lock file {self.path}") from None
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(record, f)
            self._held = True
            return
        raise LockedError(f"could not take the lock {self.path}")

    def release(self) -> None:
        if self._held and self._owner().get("pid") == os.getpid():
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            # A run that failed before writing anything leaves no folder the lock alone made.
            if self._made_folder:
                try:
                    os.rmdir(os.path.dirname(os.path.abspath(self.path)))
                except OSError:
                    pass
        self._held = False

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def _is_remote(path: str) -> bool:
    return "://" in path


def lock_beside(directory: str, what: str):
    """The lock of a directory that may be replaced as a whole: `.NAME.embedopt-lock` in its parent.

    A remote directory (gs://, ...) has no atomic exclusive create to build
    a lock on: it gets none (a no-op context manager).
    """
    if _is_remote(directory):
        return contextlib.nullcontext()
    parent, name = os.path.split(os.path.abspath(directory))
    return OutputLock(os.path.join(parent, f".{name}.embedopt-lock"), what)


def lock_inside(directory: str, what: str):
    """The lock of a directory that stays in place: `.embedopt-lock` inside it (none for a remote one)."""
    if _is_remote(directory):
        return contextlib.nullcontext()
    return OutputLock(os.path.join(os.path.abspath(directory), ".embedopt-lock"), what)
