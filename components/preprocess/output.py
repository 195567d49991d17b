"""The output directory of a preprocess run: checked before, staged during, swapped in after.

A run writes into a staging folder beside `--output` (`.NAME.embedopt-tmp-*`
in the same parent, so the final rename stays on one filesystem) and swaps
it in only when everything, metadata.json included, is written. A crash or a
kill mid-run leaves the previous output as it was; `--overwrite` replaces it
only at that last step. Remote outputs (gs://, ...) have no directory
rename: there the run writes in place, after clearing an earlier run's files
when `--overwrite` is given.
"""

from __future__ import annotations

import os
import shutil
import uuid

from apache_beam.io.filesystems import FileSystems

_STAGING_TAG = ".embedopt-tmp-"
_OLD_TAG = ".embedopt-old-"


class OutputError(ValueError):
    """The output directory cannot be used as asked."""


def is_local(path: str) -> bool:
    return "://" not in path


def check_output(output: str, overwrite: bool) -> None:
    """Refuses a file, or a directory with anything in it (files or folders) unless `overwrite`."""
    if is_local(output):
        if os.path.exists(output) and not os.path.isdir(output):
            raise OutputError(f"--output {output!r} is a file, not a directory; choose a directory path")
        entries = os.listdir(output) if os.path.isdir(output) else []
    else:
        entries = FileSystems.match([FileSystems.join(output, "**")])[0].metadata_list if FileSystems.exists(output) else []
    if entries and not overwrite:
        raise OutputError(f"output directory {output!r} already has data; pass --overwrite to replace it")


def stage(output: str, overwrite: bool) -> str:
    """The directory the run writes into: a new staging folder for a local output, else `output` itself."""
    if not is_local(output):
        if overwrite and FileSystems.exists(output):
            FileSystems.delete([output])
        return output
    parent, name = os.path.split(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(parent, f".{name}{_STAGING_TAG}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.makedirs(staging)
    return staging


def commit(staging: str, output: str) -> None:
    """Swaps the finished staging folder in as `output` (the old output, if any, is removed after)."""
    if staging == output:
        return
    output = os.path.abspath(output)
    old = None
    if os.path.exists(output):
        old = f"{os.path.dirname(output)}/.{os.path.basename(output)}{_OLD_TAG}{uuid.uuid4().hex[:8]}"
        os.rename(output, old)
    os.rename(staging, output)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def discard(staging: str, output: str) -> None:
    """Removes a staging folder after a failed run (never the output itself)."""
    if staging != output:
        shutil.rmtree(staging, ignore_errors=True)
