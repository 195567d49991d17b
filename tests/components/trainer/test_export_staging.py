"""Issue 22 item 2: the export writes beside serving_model/ and renames; nothing partial is ever inside it."""

from __future__ import annotations

import os

import pytest
import tensorflow as tf

from components.trainer import export
from tests.components.trainer.served_model import export_random_model


def _files(folder) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), folder) for d, _, files in os.walk(folder) for f in files}


def test_a_failed_export_leaves_nothing_in_the_serving_dir(tmp_path, monkeypatch):
    real_save = tf.saved_model.save

    def save_then_fail(module, export_dir, signatures=None):
        real_save(module, export_dir, signatures=signatures)
        os.remove(os.path.join(export_dir, "saved_model.pb"))  # as a full disk left it: variables, no graph
        open(os.path.join(export_dir, "saved_model.pb.tmp5"), "wb").close()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export.tf.saved_model, "save", save_then_fail)
    with pytest.raises(OSError, match="No space left"):
        export_random_model(str(tmp_path), "hash")
    assert sorted(os.listdir(tmp_path)) == ["preprocess"]  # no serving/, no staging folder beside it


def test_a_rerun_removes_what_an_in_place_export_left(tmp_path):
    serving = tmp_path / "serving"
    # What a kill during the earlier in-place export left inside serving/.
    (serving / "variables" / "variables_temp").mkdir(parents=True)
    (serving / "variables" / "variables_temp" / "part-00000").write_bytes(b"x")
    (serving / "saved_model.pb.tmp77").write_bytes(b"x")
    served = export_random_model(str(tmp_path), "hash")
    found = _files(served.export_dir)
    assert "saved_model.pb" in found
    assert not [f for f in found if "tmp" in f or "_temp" in f], found
    assert sorted(os.listdir(tmp_path)) == ["serving"]
