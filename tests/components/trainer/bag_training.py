"""A few training steps of a DLRM with multi-hot features under any strategy, on bag data made here.

The MirroredStrategy test and the two-worker test (bag_worker.py) train
with it and compare against one replica on the same global batches. It
drives the trainer's own pieces (`build_model`, `build_optimizers`,
`make_train_step`) with a distributed dataset of ragged features, as
`run_fn` does, without the preprocess files.
"""

from __future__ import annotations

import types

import numpy as np
import tensorflow as tf

from components.trainer.fn_args import TrainerConfig
from components.trainer.loop import TrainState, build_optimizers, make_train_step
from components.trainer.model import build_model

KEYS = ("cat_0", "cat_1", "cat_2", "cat_3")
SIZES = {"cat_0": 9, "cat_1": 31, "cat_2": 17, "cat_3": 5}
BAG_KEYS = ("cat_1", "cat_2")
NUM_DENSE, GLOBAL_BATCH, STEPS = 3, 16, 3
# float32 sums over the replicas run in another order than one replica's: the trainer's own tolerance
# (tests/components/trainer/test_strategy.py).
RTOL, ATOL = 1e-4, 1e-6


def metadata():
    """What `build_model` reads of a preprocess `Metadata`, with two multi-hot features."""
    return types.SimpleNamespace(vocab_sizes=SIZES, categorical_keys=KEYS, dense_key="dense", num_dense=NUM_DENSE,
                                 multi_hot_keys=BAG_KEYS)


def config(**kwargs) -> TrainerConfig:
    base = dict(batch_size=GLOBAL_BATCH, embedding_dim=4, bottom_mlp=(6,), top_mlp=(6,), learning_rate=0.05,
                dense_learning_rate=0.01, seed=3)
    return TrainerConfig(**{**base, **kwargs})


def rows(seed: int = 0) -> dict:
    """`GLOBAL_BATCH * STEPS` examples: Zipf ids, so bags repeat ids within and across examples, and some bags
    are empty; labels tied to the ids."""
    rng = np.random.default_rng(seed)
    n = GLOBAL_BATCH * STEPS
    data = {"dense": rng.normal(size=(n, NUM_DENSE)).astype(np.float32)}
    score = np.zeros(n)
    for key in KEYS:
        if key in BAG_KEYS:
            lengths = rng.integers(0, 6, size=n)
            values = np.minimum(rng.zipf(1.3, size=lengths.sum()) - 1, SIZES[key] - 1)
            data[key] = (values.astype(np.int64), lengths.astype(np.int64))
            score += np.add.reduceat(np.append(values, 0), np.cumsum(np.append(0, lengths))[:-1]) * (lengths > 0)
        else:
            data[key] = rng.integers(0, SIZES[key], size=n).astype(np.int64)
            score += data[key]
    data["label"] = (score % 3 == 0).astype(np.float32)
    return data


def take(data: dict, start: int, stop: int) -> tuple[dict, tf.Tensor]:
    """Examples [start, stop) as the trainer's features dict (ragged bags) and labels."""
    features = {"dense": tf.constant(data["dense"][start:stop])}
    for key in KEYS:
        if key in BAG_KEYS:
            values, lengths = data[key]
            first = int(lengths[:start].sum())
            mine = lengths[start:stop]
            features[key] = tf.RaggedTensor.from_row_lengths(values[first:first + mine.sum()], mine)
        else:
            features[key] = tf.constant(data[key][start:stop])
    return features, tf.constant(data["label"][start:stop])


def batches(data: dict, context: tf.distribute.InputContext) -> tf.data.Dataset:
    """An input pipeline's per-replica batches: replica r's share of global batch s is its `GLOBAL_BATCH / N`
    consecutive rows, and a pipeline feeding several replicas yields their shares in replica order."""
    parts = context.num_replicas_in_sync
    per = GLOBAL_BATCH // parts
    replicas = parts // context.num_input_pipelines
    first = context.input_pipeline_id * replicas
    out = None
    for s in range(STEPS):
        for r in range(first, first + replicas):
            piece = tf.data.Dataset.from_tensors(take(data, s * GLOBAL_BATCH + r * per, s * GLOBAL_BATCH + (r + 1) * per))
            out = piece if out is None else out.concatenate(piece)
    return out


def train(strategy, data: dict, trainer_config: TrainerConfig, placements=None):
    """(losses, model, embedding optimizer) after `STEPS` steps; each input pipeline feeds its share.
    `placements`: a table plan's layout (components/trainer/planner.py)."""
    with strategy.scope():
        model = build_model(metadata(), trainer_config, placements=placements)
        emb_opt, dense_opt = build_optimizers(model, trainer_config, mixed_precision=False)
        state = TrainState(model, emb_opt, dense_opt, tf.Variable(0, dtype=tf.int64))

    iterator = iter(strategy.distribute_datasets_from_function(lambda context: batches(data, context)))
    step = make_train_step(strategy, state, GLOBAL_BATCH)
    losses = [float(step(iterator)) for _ in range(STEPS)]
    return losses, model, emb_opt
