"""`--preset mlperf-dlrmv2` and the new model flags: what they set, and that given flags win over the preset."""

from __future__ import annotations

import pytest

from components.trainer import cli
from components.trainer.fn_args import TrainerConfig

# MLPerf Training's DLRM-DCNv2 reference, as the issue states it (the last bottom layer is the embedding dim,
# the last top layer the logit head).
MLPERF = dict(embedding_dim=128, bottom_mlp=(512, 256), top_mlp=(1024, 1024, 512, 256), interaction="dcnv2",
              cross_layers=3, cross_rank=512, optimizer="adagrad", learning_rate=0.005, dense_optimizer="adagrad",
              dense_learning_rate=0.005, batch_size=65_536)


def _config(*argv: str) -> TrainerConfig:
    args = cli.build_parser().parse_args(["--data", "/d", "--output", "/o", *argv])
    return cli.config_from_args(args)


def test_no_flags_give_the_trainer_defaults():
    assert _config("--train-steps", "3") == TrainerConfig()


def test_preset_sets_the_mlperf_model():
    config = _config("--preset", "mlperf-dlrmv2")
    assert {key: getattr(config, key) for key in MLPERF} == MLPERF
    # What the preset leaves alone keeps its default.
    assert (config.table_layout, config.wide, config.bag_combiner) == ("shared", True, "sum")


def test_flags_given_beside_the_preset_win():
    config = _config("--preset", "mlperf-dlrmv2", "--embedding-dim", "8", "--batch-size", "256", "--bottom-mlp",
                     "16", "--top-mlp", "32,16", "--cross-rank", "0", "--cross-layers", "2", "--learning-rate", "0.1",
                     "--optimizer", "lazy_adam")
    assert (config.embedding_dim, config.batch_size, config.bottom_mlp, config.top_mlp) == (8, 256, (16,), (32, 16))
    assert (config.cross_rank, config.cross_layers, config.learning_rate, config.optimizer) == (0, 2, 0.1, "lazy_adam")
    # ... and the rest of the preset stays.
    assert (config.interaction, config.dense_optimizer, config.dense_learning_rate) == ("dcnv2", "adagrad", 0.005)


def test_preset_batch_size_replaces_the_automatic_one():
    args = cli.build_parser().parse_args(["--data", "/d", "--output", "/o", "--preset", "mlperf-dlrmv2"])
    assert not cli.uses_auto_batch(args)
    plain = cli.build_parser().parse_args(["--data", "/d", "--output", "/o"])
    assert cli.uses_auto_batch(plain)


def test_model_flags_reach_the_config():
    config = _config("--interaction", "dcnv2", "--cross-layers", "4", "--cross-rank", "16", "--bag-combiner", "sqrtn")
    assert (config.interaction, config.cross_layers, config.cross_rank, config.bag_combiner) == ("dcnv2", 4, 16, "sqrtn")


def test_custom_config_preset_expands_and_given_keys_win():
    config = TrainerConfig.from_custom_config({"preset": "mlperf-dlrmv2", "batch_size": 512})
    assert config.batch_size == 512 and config.cross_rank == 512 and config.embedding_dim == 128
    # The expanded config round-trips without the preset key.
    assert TrainerConfig.from_custom_config(config.to_json()) == config


@pytest.mark.parametrize("custom,message", [
    ({"preset": "mlperf-dlrmv3"}, "unknown preset 'mlperf-dlrmv3'; valid presets: mlperf-dlrmv2"),
    ({"interaction": "cross"}, "interaction must be one of"),
    ({"cross_rank": -1}, "cross_rank must be an integer >= 0"),
    ({"cross_layers": 0}, "cross_layers must be an integer >= 1"),
    ({"bag_combiner": "max"}, "bag_combiner must be one of"),
])
def test_bad_values_are_named(custom, message):
    with pytest.raises(ValueError, match=message):
        TrainerConfig.from_custom_config(custom)


@pytest.mark.parametrize("argv", [["--preset", "tiny"], ["--cross-rank", "-1"], ["--bag-combiner", "max"],
                                  ["--interaction", "cross"]])
def test_bad_flags_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--data", "/d", *argv])
    assert argv[0] in capsys.readouterr().err


def test_help_says_what_the_preset_sets():
    text = " ".join(cli.build_parser().format_help().split())
    for fragment in ("--preset", "mlperf-dlrmv2", "embedding_dim 128", "bottom_mlp 512-256",
                     "top_mlp 1024-1024-512-256", "cross_layers 3", "cross_rank 512", "optimizer adagrad",
                     "learning_rate 0.005", "batch_size 65,536", "--cross-layers", "--cross-rank", "--bag-combiner",
                     "dcnv2"):
        assert fragment in text, fragment
