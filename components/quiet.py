"""Keeping TensorFlow's and Beam's start-up chatter off a normal run's output.

TensorFlow 2.21 prints its native start-up lines (`port.cc` oneDNN,
`cudart_stub`, `cpu_feature_guard`, `cuInit`) from C++ before absl logging
is initialised, so `TF_CPP_MIN_LOG_LEVEL` cannot hide them (tensorflow issue
100442). `import_tensorflow()` imports TensorFlow and lists the devices (which
prints the rest) with file descriptor 2 pointed at a temporary file, then
writes back every line that is not one of those. `configure_logging()` sets
the Python loggers: ours at INFO, TensorFlow's, absl's and Beam's at WARNING
(TensorFlow's through the root handler, not its own as well, which printed
each line twice), and drops Beam's log of a failing bundle's traceback,
which the command reports in one line once the pipeline re-raises it.
`--verbose` keeps everything.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile

VERBOSE_ENV = "EMBEDOPT_VERBOSE"
# The native lines TensorFlow prints while it loads and finds its devices.
_NATIVE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IWE]\d{4} [\d:. ]+\d+ (port|cudart_stub|cpu_feature_guard|cuda_platform|cuda_executor|cuda_dnn|cuda_blas"
    r"|cuda_fft|computation_placer)\.cc:\d+\].*"
    r"|To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.)$")
QUIET_LOGGERS = ("tensorflow", "absl", "apache_beam", "h5py", "matplotlib")


def verbose_requested(argv) -> bool:
    """`--verbose`/`-v` among `argv`, or EMBEDOPT_VERBOSE=1 in the environment (so worker processes inherit it)."""
    return "--verbose" in argv or "-v" in argv or os.environ.get(VERBOSE_ENV) == "1"


def is_native_noise(line: str) -> bool:
    """Whether `line` is one of TensorFlow's native start-up lines."""
    return bool(_NATIVE.match(line.rstrip("\n")))


@contextlib.contextmanager
def native_output_filtered(enabled: bool = True):
    """Runs the block with fd 2 in a temporary file, then writes its lines back except TensorFlow's start-up ones.

    Whatever the block writes to stderr is kept (and written back even when
    it raises); only the lines `is_native_noise` matches are dropped.
    """
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if not is_native_noise(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def import_tensorflow(verbose: bool = False):
    """`import tensorflow`, and its device discovery, without the native start-up lines (unless `verbose`)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if verbose else "2")
    with native_output_filtered(not verbose):
        import tensorflow as tf

        tf.config.list_physical_devices()
    return tf


# Beam logs a failing bundle's error with its traceback here, then raises it to the pipeline's caller, where the
# command reports it in one line (components/failure.py): the log would print the same error a second time.
BEAM_BUNDLE_LOGGER = "apache_beam.runners.common"


class _DropReraisedErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and record.exc_info)


def configure_logging(verbose: bool = False) -> None:
    """INFO lines of ours as plain messages; other libraries' below WARNING only with `verbose`."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO if verbose else logging.WARNING)
    beam_bundles = logging.getLogger(BEAM_BUNDLE_LOGGER)
    for existing in [f for f in beam_bundles.filters if isinstance(f, _DropReraisedErrors)]:
        beam_bundles.removeFilter(existing)
    if not verbose:
        beam_bundles.addFilter(_DropReraisedErrors())
    tf_logger = logging.getLogger("tensorflow")
    # TensorFlow adds a handler of its own; with ours on the root logger each line came out twice.
    for handler in list(tf_logger.handlers):
        tf_logger.removeHandler(handler)
    tf_logger.propagate = True
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
