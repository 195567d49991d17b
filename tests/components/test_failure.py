"""Issue 22 item 1: every command ends a failure with one line, `embedopt <command>: <what> (<path>)`.

The errors are the ones the libraries raise (an OSError, TensorFlow's op errors, Beam's RuntimeError
wrapping a DoFn's error); the expected lines are written out here, not computed with the module under test.
"""

from __future__ import annotations

import errno
import sys
import types

import pytest
import tensorflow as tf

from components import cli
from components.failure import describe, note_path


def test_enospc_oserror_names_the_path_and_the_space_left(tmp_path):
    err = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "file"))
    line = describe(err)
    assert line.startswith(f"disk full: no space left on device writing {tmp_path}/out/file (")
    assert f"on the filesystem holding {tmp_path}" in line and " free of " in line


def test_tensorflow_resource_exhausted_on_save_names_the_checkpoint_path(tmp_path):
    path = f"{tmp_path}/checkpoints/ckpt-1_temp/part-00000-of-00001.data-00000-of-00001.tempstate123"
    # TensorFlow's message, as it came from a full disk (braces and all).
    message = ("{{function_node __wrapped__SaveV2_dtypes_36_device_/job:localhost/replica:0/task:0/device:CPU:0}} "
               + path + "; No space left on device [Op:SaveV2]")
    err = tf.errors.ResourceExhaustedError(None, None, message)
    assert describe(err).startswith(f"disk full: no space left on device writing {path} (")


def test_beam_wrapped_enospc_takes_the_path_the_executor_noted(tmp_path):
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("OSError: [Errno 28] No space left on device [while running 'WriteVocab']") from inner
    except RuntimeError as err:
        wrapped = note_path(err, str(tmp_path / "out"))
    assert describe(wrapped).startswith(f"disk full: no space left on device writing {tmp_path}/out (")


@pytest.mark.parametrize("error", [tf.errors.CancelledError, tf.errors.UnavailableError])
def test_collective_abort_says_another_worker_stopped(error):
    err = error(None, None, "Collective ops is aborted by: Socket closed\nAdditional GRPC error information ...\n"
                "The error could be from a previous operation. Restart your program to reset. [Op:__inference_train]")
    assert describe(err).startswith("another worker stopped or cannot be reached, so this worker's collective "
                                    "operation was aborted")


def _fake_command(monkeypatch, error: BaseException):
    def main(argv):
        raise error

    module = types.ModuleType("fake_command")
    module.main = main
    monkeypatch.setitem(sys.modules, "fake_command", module)
    monkeypatch.setitem(cli.COMMANDS, "fake", ("fake_command", "raises"))


def test_cli_turns_any_exception_into_one_line_and_exit_1(monkeypatch, capsys, tmp_path):
    monkeypatch.delenv("EMBEDOPT_VERBOSE", raising=False)
    _fake_command(monkeypatch, OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x")))
    assert cli.main(["fake"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"embedopt fake: disk full: no space left on device writing {tmp_path}/x (")


def test_cli_verbose_prints_the_traceback_before_the_line(monkeypatch, capsys):
    monkeypatch.delenv("EMBEDOPT_VERBOSE", raising=False)
    _fake_command(monkeypatch, KeyError("boom"))
    assert cli.main(["fake", "--verbose"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.splitlines()[-1] == "embedopt fake: KeyError: 'boom'"
