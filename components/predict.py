"""`embedopt predict`: batch-score raw Criteo TSV logs with an exported SavedModel.

Reads the files matching --input (plain or .gz, in sorted name order), sends
them in batches to the SavedModel's `serve_tsv` signature and writes one
line per input line, in input order, to --output (gzip when it ends in .gz):
the click probability, or an empty line for a line the model refuses (wrong
field count, a non-integer count, a negative count when the preprocess
rejected those, bytes that are not UTF-8). Output line k is always input line
k. The refused lines' file, line number and reason go to OUTPUT.refused.tsv
(a header and one row each; written on every run, empty but for the header
when nothing was refused). With --strict the first refused line stops the run
with exit code 2 instead. Both files appear only when the whole run succeeded
(each is written to a temporary file beside it and renamed), with the mode
any new file gets under the umask. An --output that is one of the input
files (also through a symbolic or hard link) is refused before anything is
read.

The model itself finds the bad lines: a batch it rejects is split in halves
until the offending lines are isolated, so the checks are exactly those of
serving (and the negative-count policy is the one the preprocess stored).

TensorFlow is imported only once the arguments are parsed, so --help is fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import gzip
import logging
import os
import re
import sys
import time
from typing import Callable, Iterator, Sequence

from components.cli import HelpFormatter
from components.staging import same_file, temp_file_beside

PROG = "embedopt predict"
DEFAULT_BATCH_SIZE = 4096
REFUSED_SUFFIX = ".refused.tsv"
REFUSED_HEADER = "file\tline\treason\n"
LOG_INTERVAL_SECONDS = 10.0
SIGNATURE = "serve_tsv"  # components.trainer.export.SERVE_TSV, not imported to keep TensorFlow out of --help
OUTPUT_FORMAT = "%.6g"

log = logging.getLogger(__name__)


class BadLineError(ValueError):
    """A malformed input line under --strict."""


@dataclasses.dataclass(frozen=True)
class Line:
    path: str
    number: int  # 1-based
    text: bytes


@dataclasses.dataclass
class Summary:
    files: int = 0
    lines: int = 0
    scored: int = 0
    refused: int = 0
    seconds: float = 0.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(formatter_class=HelpFormatter,
        prog=PROG,
        description="Score raw Criteo TSV logs (40 tab-separated fields with the label first, or 39 without it) "
        f"with a SavedModel from `embedopt train` (its {SIGNATURE} signature) and write one line per input line, in "
        "input order: the click probability, or an empty line where the model refuses the input line (its reason "
        f"goes to OUTPUT{REFUSED_SUFFIX}). Read it with pandas.read_csv(OUTPUT, header=None, names=['probability'], "
        "skip_blank_lines=False): refused lines become NaN.",
    )
    p.add_argument("--model", required=True, help="the SavedModel directory (train's --serving-model-dir, "
                   "OUTPUT/serving_model with train's --output)")
    p.add_argument("--input", required=True, help="glob pattern of the TSV files, plain or gzip (.gz); quote it so "
                   "the shell does not expand it. Files are read in sorted name order")
    p.add_argument("--output", required=True, help="file to write, one probability per line formatted "
                   f"{OUTPUT_FORMAT.replace('%', '%%')}; gzip when the name ends in .gz. Written only when the run succeeds")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help="lines per call of the model")
    p.add_argument("--strict", action="store_true",
                   help="stop with exit code 2 at the first line the model refuses, naming its file and line, and "
                   f"write nothing (default: off: an empty output line, and the reason in OUTPUT{REFUSED_SUFFIX})")
    p.add_argument("--skip-bad-lines", action="store_true", help=argparse.SUPPRESS)  # its behaviour is now the default
    p.add_argument("--no-progress", action="store_true",
                   help=f"no progress bar; log lines every {LOG_INTERVAL_SECONDS:.0f} s instead. Off a terminal this "
                   "is what happens anyway (default: bar on a terminal)")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="also print TensorFlow's start-up lines and the INFO logs of TensorFlow and Beam")
    return p


def read_lines(files: Sequence[str]) -> Iterator[Line]:
    for path in files:
        opener = gzip.open if path.endswith(".gz") else open
        try:
            with opener(path, "rb") as f:
                for number, text in enumerate(f, start=1):
                    yield Line(path, number, text.rstrip(b"\r\n"))
        except (OSError, EOFError) as err:  # EOFError: a truncated .gz
            raise OSError(f"cannot read {path}: {err}") from None


def batches(lines: Iterator[Line], size: int) -> Iterator[list[Line]]:
    batch = []
    for line in lines:
        batch.append(line)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _reason(err) -> str:
    """The model's own explanation from an InvalidArgumentError, without TensorFlow's node trace."""
    message = getattr(err, "message", str(err))
    found = re.search(r"assertion failed: \[(.*?)\]\s*\n", message, re.S)
    if found:
        return re.sub(r" \(row \d+ of the batch\)$", "", found.group(1))
    lines = [line.strip() for line in message.splitlines() if line.strip() and "[[" not in line]
    return lines[-1] if lines else message


def score_isolating_bad_lines(score: Callable, texts: list[bytes], invalid_error: type, stop_at_first: bool):
    """(probabilities, with None for a bad line; [(index, reason)] of the bad lines).

    A rejected batch is split in halves until each bad line is alone, so k bad
    lines cost O(k log batch) extra calls. With `stop_at_first`, the search
    stops at the first bad line and the probabilities are incomplete.
    """
    try:
        return list(score(texts)), []
    except invalid_error as err:
        if len(texts) == 1:
            return [None], [(0, _reason(err))]
    half = len(texts) // 2
    left, left_bad = score_isolating_bad_lines(score, texts[:half], invalid_error, stop_at_first)
    if left_bad and stop_at_first:
        return left + [None] * (len(texts) - half), left_bad
    right, right_bad = score_isolating_bad_lines(score, texts[half:], invalid_error, stop_at_first)
    return left + right, left_bad + [(half + i, reason) for i, reason in right_bad]


class _Progress:
    """A tqdm bar on a terminal, else a log line every LOG_INTERVAL_SECONDS; both show lines/s."""

    def __init__(self, bar: bool):
        self._start = self._last_log = time.perf_counter()
        self._lines = 0
        self._bar = None
        if bar:
            from tqdm import tqdm

            self._bar = tqdm(unit=" lines", unit_scale=True, file=sys.stderr, desc="predict")

    def update(self, lines: int) -> None:
        self._lines += lines
        if self._bar is not None:
            self._bar.update(lines)
            return
        now = time.perf_counter()
        if now - self._last_log >= LOG_INTERVAL_SECONDS:
            self._last_log = now
            log.info("%s: %d lines, %.0f lines/s", PROG, self._lines, self._lines / (now - self._start))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _open_output(path: str):
    """A temporary file beside `path` (renamed onto it at the end), gzip when `path` ends in .gz."""
    fd, tmp = temp_file_beside(path)
    raw = os.fdopen(fd, "wb")
    return tmp, (gzip.GzipFile(fileobj=raw, mode="wb") if path.endswith(".gz") else raw), raw


def _one_line(text: str) -> str:
    return re.sub(r"[\t\r\n]+", " ", text)


def _write_refused(path: str, refused: list) -> None:
    tmp, out, raw = _open_output(path)
    try:
        out.write((REFUSED_HEADER + "".join(f"{_one_line(line.path)}\t{line.number}\t{_one_line(reason)}\n"
                                            for line, reason in refused)).encode("utf-8"))
        out.close()
        os.replace(tmp, path)
    except BaseException:
        out.close()
        os.remove(tmp)
        raise


def check_output_is_not_an_input(output: str, files: Sequence[str]) -> None:
    """Raises ValueError when `output` or its refused-lines file is one of `files` (same device and inode, so
    also through links): the rename at the end would replace those logs with their scores."""
    for written in (output, output + REFUSED_SUFFIX):
        for path in files:
            if same_file(written, path):
                link = "" if os.path.abspath(written) == os.path.abspath(path) else " (a link to it)"
                raise ValueError(f"--output {output!r}{link} would overwrite the input file {path!r}: the scores "
                                 "would replace the logs; choose another --output")


def predict(model_dir: str, files: Sequence[str], output: str, *, batch_size: int = DEFAULT_BATCH_SIZE,
            strict: bool = False, progress_bar: bool = False) -> Summary:
    """Scores every line of `files` into `output` (refused lines: an empty line, listed in
    OUTPUT.refused.tsv); see the module docstring.

    Raises BadLineError for a refused line under `strict`, and ValueError when
    the model has no serve_tsv signature or `output` is one of `files`.
    """
    import tensorflow as tf

    check_output_is_not_an_input(output, files)

    serve = tf.saved_model.load(model_dir).signatures
    if SIGNATURE not in serve:
        raise ValueError(f"{model_dir} has no {SIGNATURE!r} signature (it has {sorted(serve)}); "
                         "re-export it with this version of `embedopt train`")
    serve = serve[SIGNATURE]

    def score(texts):
        return serve(lines=tf.constant(texts, tf.string))["probabilities"].numpy()[:, 0]

    summary = Summary(files=len(files))
    start = time.perf_counter()
    tmp, out, raw = _open_output(output)
    refused = []
    bar = _Progress(progress_bar)
    try:
        for batch in batches(read_lines(files), batch_size):
            probabilities, bad = score_isolating_bad_lines(score, [line.text for line in batch],
                                                           tf.errors.InvalidArgumentError, strict)
            if bad and strict:
                index, reason = bad[0]
                raise BadLineError(f"{batch[index].path}:{batch[index].number}: malformed line: {reason}; "
                                   "fix it, or leave out --strict to score the other lines (a refused line gets an "
                                   f"empty output line and its reason in OUTPUT{REFUSED_SUFFIX})")
            refused += [(batch[index], reason) for index, reason in bad]
            out.write("".join("\n" if p is None else OUTPUT_FORMAT % p + "\n" for p in probabilities).encode("ascii"))
            summary.lines += len(batch)
            summary.refused += len(bad)
            bar.update(len(batch))
        out.close()
        raw.close()
        _write_refused(output + REFUSED_SUFFIX, refused)
        os.replace(tmp, output)
    except BaseException:
        out.close()
        raw.close()
        os.remove(tmp)
        raise
    finally:
        bar.close()
    summary.scored = summary.lines - summary.refused
    summary.seconds = time.perf_counter() - start
    return summary


def main(argv: list[str] | None = None) -> int:
    from components.quiet import configure_logging, import_tensorflow

    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    configure_logging(args.verbose)
    import_tensorflow(args.verbose)
    if args.batch_size < 1:
        print(f"{PROG}: --batch-size must be >= 1, got {args.batch_size}", file=sys.stderr)
        return 2
    files = sorted(glob.glob(args.input))
    if not files:
        print(f"{PROG}: no files match --input {args.input!r}", file=sys.stderr)
        return 2
    if args.skip_bad_lines:
        print(f"{PROG}: --skip-bad-lines is no longer needed: refused lines now get an empty output line (and their "
              f"reason in OUTPUT{REFUSED_SUFFIX}) by default; --strict stops at the first one", file=sys.stderr)
    try:
        summary = predict(args.model, files, args.output, batch_size=args.batch_size, strict=args.strict,
                          progress_bar=not args.no_progress and sys.stderr.isatty())
    except (BadLineError, ValueError, OSError) as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return 2
    rate = summary.lines / summary.seconds if summary.seconds > 0 else float("inf")
    print(f"{PROG}: read {summary.lines} lines from {summary.files} file(s), scored {summary.scored}, refused "
          f"{summary.refused} in {summary.seconds:.1f} s ({rate:.0f} lines/s) -> {args.output} (one line per input "
          f"line; refused lines are empty, their reasons in {args.output + REFUSED_SUFFIX})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
