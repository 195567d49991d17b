"""Named model presets: whole `custom_config`s of known models, under the settings given beside them.

A preset fills in the `TrainerConfig` fields it names; a field given
explicitly (an `embedopt train` flag, or a `custom_config` key next to
`"preset"`) wins over it, and the fields it leaves alone keep their
defaults. So `--preset mlperf-dlrmv2 --embedding-dim 16 --batch-size 1024`
is MLPerf's architecture scaled down for a CPU.

mlperf-dlrmv2 is MLPerf Training's DLRM-DCNv2 reference (Criteo 1TB
multi-hot, TorchRec): embedding dim 128, bottom MLP 512-256-128 (the last
layer is the embedding dim), top MLP 1024-1024-512-256-1 (the last layer is
the logit head), a DCN-v2 interaction of 3 cross layers of rank 512,
Adagrad with learning rate 0.005 on the tables and on the dense weights
(the reference trains both with one Adagrad), global batch 65,536. Two
differences stay: embedopt's Adagrad starts its accumulators at 0.1 (the
reference at 0, with epsilon 1e-8), and the wide term (one extra column per
table row, `--no-wide` drops it) is embedopt's own, not the reference's.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "mlperf-dlrmv2": {
        "embedding_dim": 128,
        "bottom_mlp": (512, 256),
        "top_mlp": (1024, 1024, 512, 256),
        "interaction": "dcnv2",
        "cross_layers": 3,
        "cross_rank": 512,
        "optimizer": "adagrad",
        "learning_rate": 0.005,
        "dense_optimizer": "adagrad",
        "dense_learning_rate": 0.005,
        "batch_size": 65_536,
    },
}


def preset_values(name: str) -> dict[str, Any]:
    """The `TrainerConfig` fields preset `name` sets; ValueError naming the valid presets."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(sorted(PRESETS))}")
    return dict(PRESETS[name])


def describe(name: str) -> str:
    """One line of what preset `name` sets, for --help and the docs."""
    shown = []
    for key, value in PRESETS[name].items():
        value = "-".join(map(str, value)) if isinstance(value, tuple) else f"{value:,}" if isinstance(value, int) else value
        shown.append(f"{key} {value}")
    return ", ".join(shown)
