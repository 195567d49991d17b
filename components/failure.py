"""One line for any failure of an `embedopt` command: `embedopt <command>: <what> (<path>)`.

`components/cli.py` runs every subcommand under `one_line_failures`. Usage
errors are handled by the commands themselves (exit 2, their own line); what
reaches this module is everything else: a full disk (`OSError` ENOSPC, or
TensorFlow's `ResourceExhaustedError` "No space left on device", or either
wrapped by Beam in a `RuntimeError` whose text is all that is left), a
collective operation aborted because another worker died, any other
`OSError` or TensorFlow op error, or a bug. Each becomes one line on stderr
and exit code 1; the traceback is printed above it only with `--verbose`.

Code that knows which path a failure concerns and whose error may not say
it (a Beam pipeline writing into a staging folder, an export) calls
`note_path(err, path)` before re-raising.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import sys
import traceback

FAILURE_EXIT_CODE = 1
INTERRUPTED_EXIT_CODE = 130
_PATH_ATTRIBUTE = "embedopt_path"
_NO_SPACE = "No space left on device"
# A path in an error text, absolute or relative: "run/ckpt-1_temp/part-0; No space left on device".
_PATH_IN_TEXT = re.compile(r"(?:^|(?<=[\s'\"(]))([^\s;:'\"\[\](){}]*/[^\s;:'\"\[\](){}]+)")
# TensorFlow's error types on the surviving workers when a peer dies or stops answering, and what its
# collectives then say ("Collective ops is aborted by: ...").
_PEER_LOST_ERRORS = ("UnavailableError", "AbortedError", "CancelledError")
_COLLECTIVE = re.compile(r"[Cc]ollective")


def note_path(err: BaseException, path: str) -> BaseException:
    """Records `path` as the one `err` concerns, unless an inner part of the failure named one already."""
    if getattr(err, _PATH_ATTRIBUTE, None) is None:
        try:
            setattr(err, _PATH_ATTRIBUTE, path)
        except AttributeError:  # a few built-in exception types take no attributes
            pass
    return err


def _chain(err: BaseException):
    """`err` and the exceptions it was raised from or while handling, outermost first."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _text(err: BaseException) -> str:
    return getattr(err, "message", None) or str(err)


def is_disk_full(err: BaseException) -> bool:
    return any((isinstance(e, OSError) and e.errno == errno.ENOSPC) or _NO_SPACE in _text(e) for e in _chain(err))


def _path_of(err: BaseException) -> str | None:
    for e in _chain(err):
        noted = getattr(e, _PATH_ATTRIBUTE, None)
        if noted:
            return noted
    for e in _chain(err):
        if isinstance(e, OSError) and e.filename:
            return os.fsdecode(e.filename)
    for e in _chain(err):
        found = _PATH_IN_TEXT.search(_text(e).split(_NO_SPACE)[0].rsplit("}}", 1)[-1])
        if found:
            return found.group(1).rstrip(".,")
    return None


def _space_left(path: str | None) -> str:
    """'12.0 kB free of 40.0 kB on /mount'-like text for the filesystem holding `path` (its nearest existing
    ancestor); '' when that cannot be read (a remote path)."""
    if not path or "://" in path:
        return ""
    current = os.path.abspath(path)
    while not os.path.exists(current) and os.path.dirname(current) != current:
        current = os.path.dirname(current)
    try:
        usage = shutil.disk_usage(current)
    except OSError:
        return ""
    return f"{_size(usage.free)} free of {_size(usage.total)} on the filesystem holding {current}"


def _size(n: int) -> str:
    if n < 1000:
        return f"{n} bytes"
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"


def _last_line(text: str) -> str:
    """The informative end of a multi-line error text, without TensorFlow's `[[{{node ...}}]]` trace."""
    text = re.split(r"\s*\[\[\{\{node ", text, maxsplit=1)[0]
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def describe(err: BaseException) -> str:
    """What went wrong, in one line, with the path concerned in parentheses when it is known."""
    path = _path_of(err)
    if is_disk_full(err):
        left = _space_left(path)
        where = f" writing {path}" if path else ""
        return (f"disk full: no space left on device{where}" + (f" ({left})" if left else "")
                + "; free some space or write elsewhere, then run again")
    if _peer_lost(err):
        return ("another worker stopped or cannot be reached, so this worker's collective operation was aborted; "
                f"see that worker's error above ({_last_line(_text(err))[:300]})")
    kind, text = type(err).__name__, _last_line(_text(err))
    if isinstance(err, OSError) and err.strerror:
        message = f"{kind}: {err.strerror}"
    else:
        message = f"{kind}: {text[:500]}" if text else kind
    if path and path not in message:
        message += f" ({path})"
    return message


def _peer_lost(err: BaseException) -> bool:
    for e in _chain(err):
        if type(e).__module__.startswith("tensorflow") and (
                type(e).__name__ in _PEER_LOST_ERRORS or _COLLECTIVE.search(_text(e))):
            return True
    return False


@contextlib.contextmanager
def one_line_failures(command: str, verbose: bool, exit_codes: list[int]):
    """Runs the block; an exception leaves it as one `embedopt <command>: ...` line on stderr (after its traceback
    with `verbose`) and `exit_codes[0]` set to the code to exit with. SystemExit passes through."""
    try:
        yield
    except SystemExit:
        raise
    except KeyboardInterrupt:
        print(f"embedopt {command}: interrupted", file=sys.stderr)
        exit_codes[0] = INTERRUPTED_EXIT_CODE
    except BaseException as err:  # noqa: BLE001 (the point: no failure ends in a bare traceback)
        if verbose:
            traceback.print_exc()
        hint = "" if verbose else " (run again with --verbose for the traceback)"
        print(f"embedopt {command}: {describe(err)}{hint}", file=sys.stderr)
        exit_codes[0] = FAILURE_EXIT_CODE
