"""`FnArgs` is built in one place (`build_fn_args`): the trainer CLI, the demo and the benchmarks go through it.

The expected values below are what `embedopt train` built before the spec
refactor (captured from the old `fn_args_from_args` for each argv), so the
refactor is checked to leave the CLI's FnArgs unchanged.
"""

import dataclasses
import os

import pytest

from components.preprocess import metadata as md
from components.trainer import cli
from components.trainer.fn_args import FnArgs, TrainerConfig, build_fn_args, fn_args_for

# The old CLI's custom_config with every flag at its default (metadata_path added per case).
DEFAULT_CONFIG = {
    "optimizer": "lazy_adam", "dense_optimizer": "adam", "learning_rate": 0.001, "dense_learning_rate": 0.001,
    "batch_size": 1024, "embedding_dim": 16, "table_layout": "shared", "table_sharding": "mirrored",
    "interaction": "dot", "bottom_mlp": [64, 32], "top_mlp": [64, 32], "wide": True, "checkpoint_every": 1000,
    "log_every": 100, "strategy": "auto", "mixed_precision": False, "seed": 0, "progress": True,
    # Added with early stopping (issue 18): new keys at the end, the old ones unchanged.
    "patience": 2, "max_epochs": 20, "baseline": True,
    "bag_combiner": "sum", "cross_layers": 3, "cross_rank": 0,
}
FLAGS = ["--optimizer", "ftrl", "--dense-optimizer", "sgd", "--table-layout", "per_feature", "--bottom-mlp", "8,4",
         "--batch-size", "100", "--no-wide", "--no-progress", "--mixed-precision", "--seed", "3",
         "--table-sharding", "row", "--learning-rate", "0.5"]
FLAGS_CONFIG = {"optimizer": "ftrl", "dense_optimizer": "sgd", "learning_rate": 0.5, "batch_size": 100,
                "table_layout": "per_feature", "table_sharding": "row", "bottom_mlp": [8, 4], "wide": False,
                "mixed_precision": True, "seed": 3, "progress": False}
OUT = {"serving_model_dir": "/o/serving_model", "model_run_dir": "/o/model_run"}
DATA = {"train_files": ["{root}/Split-train/*"], "eval_files": ["{root}/Split-eval/*"],
        "schema_path": "{root}/metadata.json"}

# (argv, FnArgs fields besides custom_config, custom_config changes from DEFAULT_CONFIG); 250 eval rows.
CASES = {
    "data_output": (["--data", "{root}", "--output", "/o", "--train-steps", "7"],
                    dict(DATA, train_steps=7, eval_steps=1, **OUT), {"metadata_path": "{root}/metadata.json"}),
    "data_output_flags": (["--data", "{root}", "--output", "/o", "--train-steps", "7", *FLAGS],
                          dict(DATA, train_steps=7, eval_steps=3, **OUT),
                          dict(FLAGS_CONFIG, metadata_path="{root}/metadata.json")),
    "data_eval_steps": (["--data", "{root}", "--output", "/o", "--train-steps", "7", "--eval-steps", "2"],
                        dict(DATA, train_steps=7, eval_steps=2, **OUT), {"metadata_path": "{root}/metadata.json"}),
    "data_overrides": (["--data", "{root}", "--train-files", "/t/*", "--metadata", "/m/metadata.json", "--eval-steps",
                        "3", "--serving-model-dir", "/s", "--model-run-dir", "/r", "--train-steps", "1"],
                       dict(DATA, train_files=["/t/*"], schema_path="/m/metadata.json", train_steps=1, eval_steps=3,
                            serving_model_dir="/s", model_run_dir="/r"),
                       {"metadata_path": "/m/metadata.json"}),
    "files_only": (["--train-files", "{root}/Split-train/*", "a", "--eval-files", "{root}/Split-eval/*", "--output",
                    "/o", "--train-steps", "4"],
                   dict(DATA, train_files=["{root}/Split-train/*", "a"], schema_path=None, train_steps=4,
                        eval_steps=1, **OUT),
                   {}),
    "files_metadata": (["--train-files", "/t/*", "--eval-files", "/e/*", "--metadata", "{root}/metadata.json",
                        "--output", "/o", "--train-steps", "4", "--batch-size", "64"],
                       dict(DATA, train_files=["/t/*"], eval_files=["/e/*"], train_steps=4, eval_steps=4, **OUT),
                       {"batch_size": 64, "metadata_path": "{root}/metadata.json"}),
}


def _fill(value, root: str):
    if isinstance(value, str):
        return value.replace("{root}", root)
    if isinstance(value, (list, tuple)):
        return type(value)(_fill(v, root) for v in value)
    if isinstance(value, dict):
        return {k: _fill(v, root) for k, v in value.items()}
    return value


@pytest.fixture
def layout(tmp_path) -> md.ExamplesLayout:
    """A preprocess output with only its metadata.json (900 train rows, 250 eval rows)."""
    meta = md.Metadata(vocab_sizes={k: 5 for k in md.CATEGORICAL_KEYS}, row_counts={"train": 900, "eval": 250},
                       dead_letter_count=0, input_pattern="x", format="tsv", options={})
    md.write_metadata(meta, str(tmp_path))
    return md.ExamplesLayout(str(tmp_path))


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_cli_builds_the_fn_args_it_built_before_the_refactor(layout, name):
    argv, fields, config_changes = _fill(CASES[name], layout.root)
    fn_args = cli.fn_args_from_args(cli.build_parser().parse_args(argv))
    expected = FnArgs(**fields, custom_config={**DEFAULT_CONFIG, **config_changes})
    assert dataclasses.asdict(fn_args) == dataclasses.asdict(expected)
    # Same keys in the same order, so metrics.json's config and TFX's view of custom_config are unchanged.
    assert list(fn_args.custom_config) == list(expected.custom_config)


def test_fn_args_for_a_layout_equals_the_cli_with_data_and_output(layout):
    argv = ["--data", layout.root, "--output", "/o", "--train-steps", "7", *FLAGS]
    args = cli.build_parser().parse_args(argv)
    from_cli = cli.fn_args_from_args(args)
    assert fn_args_for(layout, "/o", cli.config_from_args(args), 7) == from_cli
    assert from_cli.train_files == [layout.train_pattern] and from_cli.schema_path == layout.metadata_path


def test_build_fn_args_leaves_metadata_path_out_when_unknown(layout):
    fn_args = build_fn_args(train_files=[layout.train_pattern], eval_files=[layout.eval_pattern], metadata_path=None,
                            serving_model_dir="/s", model_run_dir="/r", config=TrainerConfig(batch_size=100),
                            train_steps=5)
    assert "metadata_path" not in fn_args.custom_config and fn_args.schema_path is None
    # The eval steps cover the eval split once, counted from the metadata.json beside the train files.
    assert fn_args.eval_steps == 3
    assert TrainerConfig.from_custom_config(fn_args.custom_config) == TrainerConfig(batch_size=100)


def test_build_fn_args_names_a_missing_metadata_file(tmp_path):
    empty = md.ExamplesLayout(str(tmp_path))
    with pytest.raises(ValueError, match="no metadata file at"):
        fn_args_for(empty, str(tmp_path / "out"), TrainerConfig(), 3)
    # With eval_steps given nothing is read: the paths are only joined.
    fn_args = fn_args_for(empty, str(tmp_path / "out"), TrainerConfig(), 3, eval_steps=2)
    assert fn_args.model_run_dir == os.path.join(str(tmp_path), "out", "model_run")
    assert fn_args.custom_config["metadata_path"] == empty.metadata_path
