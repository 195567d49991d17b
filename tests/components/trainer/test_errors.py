"""Clear errors: bad TF_CONFIG, missing files or metadata, metadata that does not match the data, bad flags."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from components.preprocess.metadata import METADATA_FILE, ExamplesLayout
from components.trainer import cli
from components.trainer.fn_args import TrainerConfig
from components.trainer.run import run_fn
from tests.components.trainer.test_run_fn import make_fn_args


def test_bad_tf_config_env_fails_before_training(planted_data, tmp_path, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}))
    with pytest.raises(ValueError, match="TF_CONFIG task index 3 is out of range"):
        run_fn(make_fn_args(planted_data, str(tmp_path), steps=2))
    assert not os.path.exists(tmp_path / "run")


def test_missing_train_files(planted_data, tmp_path):
    fn_args = make_fn_args(planted_data, str(tmp_path), steps=2)
    fn_args.train_files = [str(tmp_path / "nowhere" / "*.tfrecord.gz")]
    with pytest.raises(ValueError, match="train_files: no files match"):
        run_fn(fn_args)


def test_missing_metadata(planted_data, tmp_path):
    fn_args = make_fn_args(planted_data, str(tmp_path), steps=2)
    fn_args.schema_path = str(tmp_path / METADATA_FILE)
    with pytest.raises(ValueError, match="no metadata file"):
        run_fn(fn_args)


def fn_args_with_metadata(planted_data, tmp_path, change):
    """FnArgs on the planted data whose schema_path is a copy of its metadata.json edited by `change`."""
    with open(ExamplesLayout(planted_data).metadata_path, encoding="utf-8") as f:
        meta = json.load(f)
    change(meta)
    wrong = tmp_path / METADATA_FILE
    wrong.write_text(json.dumps(meta))
    fn_args = make_fn_args(planted_data, str(tmp_path), steps=2)
    fn_args.schema_path = str(wrong)
    return fn_args


def test_metadata_that_does_not_match_the_data(planted_data, tmp_path):
    def tiny_vocabularies(meta):
        meta["vocab_sizes"] = {key: 2 for key in meta["vocab_sizes"]}  # the data holds ids far above 1

    with pytest.raises(ValueError, match="does not match the metadata"):
        run_fn(fn_args_with_metadata(planted_data, tmp_path, tiny_vocabularies))


def test_metadata_missing_a_feature_is_refused(planted_data, tmp_path):
    with pytest.raises(ValueError, match="vocab_sizes keys"):
        run_fn(fn_args_with_metadata(planted_data, tmp_path, lambda meta: meta["vocab_sizes"].pop("cat_3")))


@pytest.mark.parametrize(
    "custom,message",
    [({"optimiser": "sgd"}, "unknown keys"), ({"optimizer": "rmsprop"}, "unknown optimizer"),
     ({"batch_size": 0}, "batch_size"), ({"table_layout": "sharded"}, "table_layout"),
     ({"learning_rate": -1.0}, "learning_rate"), ({"wide": "yes"}, "wide")],
)
def test_bad_custom_config(custom, message):
    with pytest.raises(ValueError, match=message):
        TrainerConfig.from_custom_config(custom)


def test_cli_reports_missing_data_with_exit_code_2(tmp_path, capsys):
    code = cli.main(["--data", str(tmp_path / "none"), "--output", str(tmp_path / "out"), "--train-steps", "2",
                     "--eval-steps", "1"])
    assert code == 2
    assert "no files match" in capsys.readouterr().err


def test_cli_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--train-files", "--eval-files", "--metadata", "--train-steps", "--eval-steps", "--serving-model-dir",
                 "--model-run-dir", "--optimizer", "--dense-optimizer", "--learning-rate", "--dense-learning-rate",
                 "--batch-size", "--embedding-dim", "--table-layout", "--interaction", "--checkpoint-every",
                 "--strategy", "--mixed-precision", "--local-workers", "--timeout", "--no-wide"):
        assert flag in text


def test_cli_builds_the_fn_args_run_fn_gets(planted_data, tmp_path):
    args = cli.build_parser().parse_args(["--data", planted_data, "--output", str(tmp_path), "--train-steps", "7",
                                          "--optimizer", "ftrl", "--dense-optimizer", "sgd", "--table-layout", "per_feature",
                                          "--bottom-mlp", "8,4", "--batch-size", "100"])
    fn_args = cli.fn_args_from_args(args)
    assert fn_args.train_files == [ExamplesLayout(planted_data).train_pattern]
    assert fn_args.schema_path == ExamplesLayout(planted_data).metadata_path
    assert fn_args.serving_model_dir == os.path.join(str(tmp_path), "serving_model")
    with open(fn_args.schema_path, encoding="utf-8") as f:
        eval_rows = json.load(f)["row_counts"]["eval"]
    assert fn_args.train_steps == 7 and fn_args.eval_steps == -(-eval_rows // 100)
    config = TrainerConfig.from_custom_config(fn_args.custom_config)
    assert (config.optimizer, config.dense_optimizer, config.table_layout, config.bottom_mlp) == ("ftrl", "sgd", "per_feature", (8, 4))
