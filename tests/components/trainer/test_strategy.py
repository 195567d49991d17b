"""TF_CONFIG parsing, strategy choice, and MirroredStrategy on two logical CPUs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from components.preprocess.metadata import ExamplesLayout, load_metadata
from components.preprocess.reader import make_dataset
from components.trainer.fn_args import TrainerConfig
from components.trainer.loop import TrainState, build_optimizers, make_train_step
from components.trainer.model import build_model
from components.trainer.strategy import ClusterInfo, choose_strategy, parse_tf_config

TWO = {"worker": ["127.0.0.1:1000", "127.0.0.1:1001"]}


@pytest.mark.parametrize(
    "text,message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        (json.dumps({"task": {"type": "worker", "index": 0}}), "no 'cluster'"),
        (json.dumps({"cluster": TWO}), "no 'task'"),
        (json.dumps({"cluster": TWO, "task": {"type": "worker", "index": 2}}), "index 2 is out of range"),
        (json.dumps({"cluster": TWO, "task": {"type": "worker", "index": -1}}), "out of range"),
        (json.dumps({"cluster": TWO, "task": {"type": "chief", "index": 0}}), "not in the cluster"),
        (json.dumps({"cluster": {"master": ["a:1"]}, "task": {"type": "master", "index": 0}}), "unknown task type"),
        (json.dumps({"cluster": {"worker": ["nohost"]}, "task": {"type": "worker", "index": 0}}), "host:port"),
    ],
)
def test_malformed_tf_config_raises_naming_the_problem(text, message):
    with pytest.raises(ValueError, match=message):
        parse_tf_config(text)


@pytest.mark.parametrize(
    "config,expected",
    [
        (None, ClusterInfo()),
        ({"cluster": TWO, "task": {"type": "worker", "index": 1}}, ClusterInfo(2, "worker", 1, False)),
        ({"cluster": {"chief": ["a:1"], **TWO}, "task": {"type": "worker", "index": 0}},
         ClusterInfo(3, "worker", 0, True)),
    ],
)
def test_tf_config_parsed(config, expected):
    info = parse_tf_config(json.dumps(config) if config else None)
    assert info == expected


@pytest.mark.parametrize(
    "info,chief", [(ClusterInfo(), True), (ClusterInfo(2, "worker", 0), True), (ClusterInfo(2, "worker", 1), False),
                   (ClusterInfo(3, "worker", 0, True), False), (ClusterInfo(3, "chief", 0, True), True)],
)
def test_chief_is_chief_task_or_worker_zero(info, chief):
    assert info.is_chief == chief


def test_single_process_strategy_refuses_a_multi_worker_cluster():
    with pytest.raises(ValueError, match="2 workers"):
        choose_strategy("mirrored", ClusterInfo(num_workers=2))


def test_auto_on_one_device_is_the_default_strategy():
    assert choose_strategy("auto", ClusterInfo()) is tf.distribute.get_strategy()


def _train_three_steps(strategy, data_dir, global_batch=64):
    metadata = load_metadata(data_dir)
    config = TrainerConfig(batch_size=global_batch, learning_rate=0.01, embedding_dim=8, bottom_mlp=(16,),
                           top_mlp=(16,))
    with strategy.scope():
        model = build_model(metadata, config)
        emb_opt, dense_opt = build_optimizers(model, config, mixed_precision=False)
        state = TrainState(model, emb_opt, dense_opt, tf.Variable(0, dtype=tf.int64))

    def dataset_fn(context):
        return make_dataset(ExamplesLayout(data_dir).train_pattern, metadata, context.get_per_replica_batch_size(global_batch),
                            shuffle=False, input_context=context, drop_remainder=True)

    # Every replica set reads the same global batches: record order without shuffling.
    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    step = make_train_step(strategy, state, global_batch)
    losses = [float(step(iterator)) for _ in range(3)]
    return losses, [v.numpy() for v in model.trainable_variables], int(state.step.numpy())


def test_mirrored_two_cpus_matches_single_device(planted_data):
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert mirrored.num_replicas_in_sync == 2
    losses2, weights2, steps2 = _train_three_steps(mirrored, planted_data)
    losses1, weights1, steps1 = _train_three_steps(tf.distribute.OneDeviceStrategy("/cpu:0"), planted_data)
    assert steps1 == steps2 == 3
    # Same seeds, same global batches: the per-replica loss scaled by the global
    # batch and the SUM all-reduce must give the single-device result (float32
    # reductions in a different order: 1e-5 relative).
    np.testing.assert_allclose(losses2, losses1, rtol=1e-5)
    for a, b in zip(weights2, weights1):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
