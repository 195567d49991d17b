"""Writing outputs so that a failure or a kill never leaves a half-written one in place, nor eats an input.

A directory output (the SavedModel, the preprocess output) is written into
a staging folder beside it, `.NAME.embedopt-tmp-<pid>-<hex>` in the same
parent (so the final rename stays on one filesystem), and swapped in only
when complete; a file output (predict's scores) into a temporary file
beside it, renamed onto it at the end. A failed write removes its staging
folder at once; one a kill left behind is removed by the next write to the
same output, once the process that made it is gone. Remote outputs (gs://,
...) have no directory rename: there the callers write in place.

Temporary files are created with mode 0600 (`tempfile.mkstemp`); the
finished file gets the mode any new file gets under the process's umask.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import uuid

from components.failure import note_path

STAGING_TAG = ".embedopt-tmp-"
_OLD_TAG = ".embedopt-old-"

log = logging.getLogger(__name__)


def is_local(path: str) -> bool:
    return "://" not in path


def staging_path(output: str) -> str:
    """A new staging folder name beside `output`, carrying this process's id."""
    parent, name = os.path.split(os.path.abspath(output))
    return os.path.join(parent, f".{name}{STAGING_TAG}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale_staging(output: str) -> list[str]:
    """Deletes the staging folders beside `output` whose process is gone (a kill or a crash left them); returns
    their paths. A folder of a process still running (another run writing the same output) is left alone."""
    parent, name = os.path.split(os.path.abspath(output))
    pattern = re.compile(re.escape(f".{name}") + f"({re.escape(STAGING_TAG)}|{re.escape(_OLD_TAG)})" + r"(\d+)-")
    removed = []
    for entry in sorted(os.listdir(parent)) if os.path.isdir(parent) else []:
        found = pattern.match(entry)
        if found and not _alive(int(found.group(2))):
            path = os.path.join(parent, entry)
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed %s, left by an earlier run that was killed or crashed", path)
            removed.append(path)
    return removed


def swap_in(staging: str, output: str) -> None:
    """Makes the finished `staging` folder `output`; an earlier `output` is removed after the swap."""
    output = os.path.abspath(output)
    old = None
    if os.path.lexists(output):
        parent, name = os.path.split(output)
        old = os.path.join(parent, f".{name}{_OLD_TAG}{os.getpid()}-{uuid.uuid4().hex[:8]}")
        os.rename(output, old)
    os.rename(staging, output)
    if old:
        if os.path.isdir(old) and not os.path.islink(old):
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.remove(old)


@contextlib.contextmanager
def staged_directory(output: str):
    """Yields the folder to write `output` into; swaps it in when the block ends without an error, deletes it
    otherwise (the error then names `output`)."""
    if not is_local(output):
        yield output
        return
    remove_stale_staging(output)
    staging = staging_path(output)
    os.makedirs(staging)
    try:
        yield staging
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise note_path(err, output)
    try:
        swap_in(staging, output)
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise note_path(err, output)


def default_file_mode() -> int:
    """The mode a file created with `open(path, "w")` gets: 0666 less the umask."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def temp_file_beside(path: str) -> tuple[int, str]:
    """(fd, name) of a new temporary file in `path`'s folder, with the mode a new file gets (not mkstemp's 0600),
    so the rename onto `path` gives the usual mode."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".partial", dir=directory)
    os.fchmod(fd, default_file_mode())
    return fd, tmp


def same_file(a: str, b: str) -> bool:
    """Whether `a` and `b` are one file (also through symbolic or hard links): same device and inode."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def is_within(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or lies inside it, after resolving symbolic links."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)
