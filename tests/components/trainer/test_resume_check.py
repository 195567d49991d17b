"""Issue 22 item 3: a restart checks what it resumes.

A change that makes the checkpoint meaningless (optimizer, embedding dim, another id mapping) is refused
naming the flag and both values; the next day's logs with the same id mapping are allowed, said in the log
and kept in metrics.json; a run dir from before the record resumes with a line saying it was not checked,
and even there an optimizer whose slots differ by name is refused (slots used to be restored by position).
"""

from __future__ import annotations

import json
import logging
import os
import shutil

import pytest

from components.preprocess.metadata import ExamplesLayout
from components.trainer.fn_args import FnArgs
from components.trainer.run import run_fn
from tests.components.trainer.tiny_data import preprocessed, tiny_logs

SMALL = dict(batch_size=64, embedding_dim=4, bottom_mlp=[8], top_mlp=[8], checkpoint_every=1000, log_every=1000,
             progress=False, baseline=False)


@pytest.fixture(scope="module")
def days(tmp_path_factory) -> dict[str, str]:
    """Two days of logs, each preprocessed with 50 hash buckets and with vocabularies (those differ by day)."""
    root = str(tmp_path_factory.mktemp("days"))
    raws = {day: tiny_logs(root, seed) for day, seed in (("day1", 5), ("day2", 6))}
    return {f"{day}_{mode}": preprocessed(raw, os.path.join(root, f"{day}_{mode}"), buckets)
            for day, raw in raws.items() for mode, buckets in (("hash", 50), ("vocab", None))}


def fn_args(data: str, out: str, steps: int, **config) -> FnArgs:
    layout = ExamplesLayout(data)
    return FnArgs(train_files=[layout.train_pattern], eval_files=[layout.eval_pattern], train_steps=steps,
                  eval_steps=1, serving_model_dir=os.path.join(out, "serving"), model_run_dir=os.path.join(out, "run"),
                  schema_path=layout.metadata_path, custom_config={**SMALL, **config})


@pytest.fixture(scope="module")
def trained(days, tmp_path_factory) -> dict[str, str]:
    """Output folders of 2 steps with lazy_adam: on day 1 hashed, and on day 1 with vocabularies."""
    root = tmp_path_factory.mktemp("trained")
    outs = {}
    for mode in ("hash", "vocab"):
        outs[mode] = str(root / mode)
        run_fn(fn_args(days[f"day1_{mode}"], outs[mode], steps=2))
    return outs


def _copy(trained_out: str, tmp_path) -> str:
    out = str(tmp_path / "out")
    shutil.copytree(trained_out, out)
    return out


@pytest.mark.parametrize("change, flag, old, new", [
    (dict(optimizer="adagrad"), "--optimizer", "'lazy_adam'", "'adagrad'"),
    (dict(optimizer="momentum"), "--optimizer", "'lazy_adam'", "'momentum'"),
    (dict(embedding_dim=8), "--embedding-dim", "4", "8"),
    (dict(table_layout="per_feature"), "--table-layout", "'shared'", "'per_feature'"),
])
def test_a_change_that_makes_the_checkpoint_meaningless_is_refused(trained, days, tmp_path, change, flag, old, new):
    out = _copy(trained["hash"], tmp_path)
    with pytest.raises(ValueError) as refused:
        run_fn(fn_args(days["day1_hash"], out, steps=4, **change))
    message = str(refused.value)
    assert f"{flag} (custom_config '{next(iter(change))}'): the checkpoints were written with {old}, this run asks " \
           f"for {new}" in message
    assert "another --model-run-dir" in message


def test_another_id_mapping_is_refused_naming_the_data(trained, days, tmp_path):
    out = _copy(trained["vocab"], tmp_path)
    with pytest.raises(ValueError, match=r"on --data .*day2_vocab.*its ids mean other values"):
        run_fn(fn_args(days["day2_vocab"], out, steps=4))


def test_the_next_days_logs_with_the_same_id_mapping_are_allowed_and_recorded(trained, days, tmp_path, caplog):
    out = _copy(trained["hash"], tmp_path)
    with caplog.at_level(logging.INFO, logger="components.trainer"):
        metrics = run_fn(fn_args(days["day2_hash"], out, steps=4))
    assert metrics["resumed_from_step"] == 2 and metrics["steps"] == 4
    assert [m for m in caplog.messages if m.startswith("training on new data with the same id mapping from step 2")]
    with open(os.path.join(out, "run", "metrics.json"), encoding="utf-8") as f:
        sources = json.load(f)["data_sources"]
    assert [(s["metadata_path"], s["from_step"]) for s in sources] == [
        (ExamplesLayout(days["day1_hash"]).metadata_path, 0), (ExamplesLayout(days["day2_hash"]).metadata_path, 2)]


def test_a_run_dir_from_before_the_record_resumes_unchecked_but_slots_are_matched_by_name(trained, days, tmp_path,
                                                                                            caplog):
    out = _copy(trained["hash"], tmp_path)
    os.remove(os.path.join(out, "run", "run_record.json"))
    with pytest.raises(ValueError, match=r"has the slots m, v over 1 variable\(s\); this run's \(momentum\) has "
                                         r"momentum over 1: restoring would put one slot's values into another"):
        run_fn(fn_args(days["day1_hash"], out, steps=4, optimizer="momentum"))
    with caplog.at_level(logging.WARNING, logger="components.trainer"):
        metrics = run_fn(fn_args(days["day1_hash"], out, steps=4))
    assert metrics["resumed_from_step"] == 2 and metrics["steps"] == 4
    assert [m for m in caplog.messages if "could not check" in m]
