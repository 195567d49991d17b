"""Issue 11 items 5, 10 and 14 in one process: stale checkpoint temp folders, empty splits, run_fn twice."""

from __future__ import annotations

import json
import logging
import math
import os

import pytest
import tensorflow as tf

from components.preprocess.metadata import ExamplesLayout
from components.trainer.fn_args import FnArgs
from components.trainer.run import run_fn
from tests.components.trainer.test_run_fn import make_fn_args

TINY_ROWS = 1_000
SMALL = dict(batch_size=64, embedding_dim=4, bottom_mlp=[8], top_mlp=[8], checkpoint_every=1000, log_every=1000,
             progress=False)


@pytest.fixture(scope="module")
def tiny_raw(tmp_path_factory) -> str:
    from components.preprocess import synth
    from components.preprocess.synth_truth import SynthConfig

    raw = str(tmp_path_factory.mktemp("tiny") / "raw" / "data.tsv")
    config = SynthConfig(seed=5, vocab_sizes=(20,) * 26, reference_rows=TINY_ROWS, frequent_count=10,
                         calibration_rows=5_000)
    synth.generate(config, TINY_ROWS, raw, progress=False)
    return raw


def preprocessed(raw: str, out: str, eval_fraction: float) -> str:
    from components.preprocess import pipeline
    from components.preprocess.spec import PreprocessSpec

    pipeline.execute(PreprocessSpec(input=raw, output=out, eval_fraction=eval_fraction))
    return out


def write_empty_shard(split_dir: str) -> None:
    """An empty GZIP TFRecord file, as a writer leaves for a split that received no row."""
    os.makedirs(split_dir, exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(split_dir, "data-00000-of-00001.tfrecord.gz"), options="GZIP"):
        pass


def tiny_fn_args(data: str, out: str, steps: int = 3) -> FnArgs:
    layout = ExamplesLayout(data)
    return FnArgs(
        train_files=[layout.train_pattern], eval_files=[layout.eval_pattern],
        train_steps=steps, eval_steps=1, serving_model_dir=os.path.join(out, "serving"),
        model_run_dir=os.path.join(out, "run"), schema_path=layout.metadata_path,
        custom_config=dict(SMALL),
    )


def with_an_empty_split(raw: str, tmp_path, split: str, how: str) -> FnArgs:
    """FnArgs on preprocessed `raw` whose `split` is empty: no folder at all, or (how="empty_shard") one shard
    holding no record."""
    data = preprocessed(raw, str(tmp_path / "data"), eval_fraction=0.0 if split == "eval" else 1.0)
    if how == "empty_shard":
        write_empty_shard(ExamplesLayout(data).split_dir(split))
    return tiny_fn_args(data, str(tmp_path / "out"))


@pytest.mark.parametrize("eval_shard", ["no_split_folder", "empty_shard"])
def test_empty_eval_split_skips_eval_and_still_exports(tiny_raw, tmp_path, eval_shard):
    fn_args = with_an_empty_split(tiny_raw, tmp_path, "eval", eval_shard)
    metrics = run_fn(fn_args)
    assert metrics["steps"] == 3
    assert metrics["eval_auc"] is None and metrics["eval_log_loss"] is None and metrics["eval_examples"] == 0
    assert "eval split is empty" in metrics["eval_note"]
    assert os.path.exists(os.path.join(fn_args.serving_model_dir, "saved_model.pb"))
    with open(os.path.join(fn_args.model_run_dir, "metrics.json"), encoding="utf-8") as f:
        written = json.load(f)
    assert written["eval_auc"] is None and "eval split is empty" in written["eval_note"]


@pytest.mark.parametrize("train_shard", ["no_split_folder", "empty_shard"])
def test_empty_train_split_is_refused_before_training(tiny_raw, tmp_path, train_shard):
    fn_args = with_an_empty_split(tiny_raw, tmp_path, "train", train_shard)
    with pytest.raises(ValueError, match=r"train split is empty: .*row_counts\['train'\] = 0"):
        run_fn(fn_args)
    assert not os.path.exists(fn_args.model_run_dir)


def test_stale_checkpoint_temp_folder_is_removed_and_the_run_resumes(planted_data, tmp_path, caplog):
    fn_args = make_fn_args(planted_data, str(tmp_path), steps=2, checkpoint_every=1)
    run_fn(fn_args)
    ckpt_dir = os.path.join(fn_args.model_run_dir, "checkpoints")
    # What a kill during `CheckpointManager.save` leaves: the shards written so far, never merged.
    stale = os.path.join(ckpt_dir, "ckpt-3_temp")
    os.makedirs(stale)
    with open(os.path.join(stale, "part-00000-of-00001.data-00000-of-00001"), "wb") as f:
        f.write(b"\0" * 4096)

    # Resumed from step 2, the run saves only its final step 4: nothing of its own replaces ckpt-3_temp.
    fn_args.train_steps = 4
    fn_args.custom_config["checkpoint_every"] = 10
    with caplog.at_level(logging.INFO, logger="components.trainer"):
        metrics = run_fn(fn_args)
    assert not os.path.exists(stale)
    assert any("ckpt-3_temp" in r.getMessage() and "removed" in r.getMessage() for r in caplog.records)
    assert metrics["resumed_from_step"] == 2 and metrics["steps"] == 4
    assert tf.train.latest_checkpoint(ckpt_dir).endswith("ckpt-4")


def test_run_fn_twice_in_one_process_with_mirrored_strategy(planted_data, tmp_path):
    # The conftest fixture moves the collective keys once per test, so both runs are in this one test.
    # The second run changes the model, as a notebook user would between runs: its collectives differ
    # from the first run's in number and shape.
    runs = {"first": {}, "second": dict(table_layout="per_feature", embedding_dim=8)}
    for name, change in runs.items():
        fn_args = make_fn_args(planted_data, str(tmp_path / name), steps=3, strategy="mirrored", **change)
        metrics = run_fn(fn_args)
        assert metrics["strategy"] == "MirroredStrategy" and metrics["num_replicas"] == 2
        assert metrics["steps"] == 3 and 0.0 < metrics["eval_auc"] <= 1.0
        assert math.isfinite(metrics["final_train_loss"]), name
