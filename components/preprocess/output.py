"""The output directory of a preprocess run: checked before, staged during, swapped in after.

A run writes into a staging folder beside `--output` (`.NAME.embedopt-tmp-*`
in the same parent, so the final rename stays on one filesystem) and swaps
it in only when everything, metadata.json included, is written. A crash or a
kill mid-run leaves the previous output as it was; `--overwrite` replaces it
only at that last step. Remote outputs (gs://, ...) have no directory
rename: there the run writes in place, after clearing an earlier run's files
when `--overwrite` is given. An output that is, or holds, one of the
inputs is refused, `--overwrite` or not: replacing it would delete them.
The staging folders of runs that were killed are removed by the next run
(components/staging.py).
"""

from __future__ import annotations

import os
import shutil

from apache_beam.io.filesystems import FileSystems

from components import staging as staged


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


def check_not_an_input(output: str, inputs) -> None:
    """Refuses an `output` folder that is, or holds, one of `inputs` (local paths, symbolic links resolved)."""
    if not is_local(output):
        return
    for path in inputs:
        if path and is_local(path) and staged.is_within(path, output):
            raise OutputError(f"--output {output!r} is or holds the input {path!r}: writing the output (or replacing it "
                              "with --overwrite) would delete the input; choose an output folder outside the input's")


def stage(output: str, overwrite: bool) -> str:
    """The directory the run writes into: a new staging folder for a local output, else `output` itself."""
    if not is_local(output):
        if overwrite and FileSystems.exists(output):
            FileSystems.delete([output])
        return output
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    staged.remove_stale_staging(output)
    staging = staged.staging_path(output)
    os.makedirs(staging)
    return staging


def commit(staging: str, output: str) -> None:
    """Swaps the finished staging folder in as `output` (the old output, if any, is removed after)."""
    if staging != output:
        staged.swap_in(staging, output)


def discard(staging: str, output: str) -> None:
    """Removes a staging folder after a failed run (never the output itself)."""
    if staging != output:
        shutil.rmtree(staging, ignore_errors=True)
