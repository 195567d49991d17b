"""Mixed precision: one all-finite decision per step covers both optimizers.

A tiny two-part model (an embedding table for the sparse optimizer, a dense
layer for the dense one) whose backward pass can put NaN into either part's
gradients only, per example, while the forward pass and loss stay finite.
Finite steps are compared with a NumPy reference of the model's gradient
and of Adagrad's and Adam's first step (float64 reference, float32
variables: rtol=1e-5, atol=1e-6).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import optimizers
from components.trainer.loop import TrainState, make_train_step
from components.trainer.loss_scale import DynamicLossScale

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
ROWS, DIM, FEATURES, BATCH = 6, 2, 3, 4
LR, INITIAL_SCALE = 0.1, 2.0**10
TOL = dict(rtol=1e-5, atol=1e-6)


@tf.custom_gradient
def _scale_gradient(x, factor):
    """Identity forward; backward multiplies the incoming gradient by `factor` (1 or NaN per example)."""

    def grad(upstream):
        return upstream * factor, tf.zeros_like(factor)

    return tf.identity(x), grad


class TwoPartModel(keras.Model):
    """logit = sum(table[ids]) + dense(x); each part's gradient can be poisoned on its own."""

    def __init__(self):
        super().__init__()
        self.table = optimizers.SparseEmbedding(ROWS, DIM, embeddings_initializer=keras.initializers.RandomNormal(seed=1))
        self.dense = keras.layers.Dense(1, kernel_initializer=keras.initializers.RandomNormal(seed=2),
                                        bias_initializer="ones")

    def embedding_variables(self):
        return [self.table.embeddings]

    def dense_variables(self):
        return list(self.dense.trainable_variables)

    def call(self, features, training=False):
        rows = _scale_gradient(self.table(features["ids"]), features["emb_poison"][:, :, None])
        dense_out = _scale_gradient(self.dense(features["x"]), features["dense_poison"])
        return tf.reduce_sum(rows, axis=[1, 2])[:, None] + dense_out


def _batch(emb_poison=(), dense_poison=()):
    """One global batch; the listed examples get NaN in that part's gradient."""
    rng = np.random.default_rng(0)
    features = {
        "ids": np.array([[0, 3], [1, 3], [2, 5], [0, 4]], np.int64),
        "x": rng.normal(size=(BATCH, FEATURES)).astype(np.float32),
        "emb_poison": np.ones((BATCH, 1), np.float32),
        "dense_poison": np.ones((BATCH, 1), np.float32),
    }
    features["emb_poison"][list(emb_poison)] = np.nan
    features["dense_poison"][list(dense_poison)] = np.nan
    labels = np.array([[1.0], [0.0], [1.0], [0.0]], np.float32)
    return features, labels


def _setup(strategy, batch):
    with strategy.scope():
        model = TwoPartModel()
        model(batch[0])
        emb_opt = optimizers.Adagrad(learning_rate=LR, nonfinite="skip")
        dense_opt = optimizers.Adam(learning_rate=LR, nonfinite="skip")
        emb_opt.build(model.embedding_variables())
        dense_opt.build(model.dense_variables())
        state = TrainState(model, emb_opt, dense_opt, tf.Variable(0, dtype=tf.int64),
                           DynamicLossScale(initial_scale=INITIAL_SCALE))
    def dataset_fn(context):
        # Replicas (and workers) take consecutive quarters or halves: under two replicas
        # examples 0-1 go to the first and 2-3 to the second.
        per_pipeline = BATCH // context.num_input_pipelines
        examples = tf.data.Dataset.from_tensor_slices(batch).skip(context.input_pipeline_id * per_pipeline)
        return examples.take(per_pipeline).batch(context.get_per_replica_batch_size(BATCH)).repeat()

    iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
    return state, make_train_step(strategy, state, BATCH), iterator


def _snapshot(state):
    variables = state.model.trainable_variables + state.embedding_optimizer.variables + state.dense_optimizer.variables
    return {v.path: v.numpy().copy() for v in variables if "skipped_steps" not in v.path}


def _strategies():
    return [pytest.param("default", id="default"), pytest.param("mirrored", id="mirrored")]


def _strategy(kind, mirrored_strategy):
    return mirrored_strategy if kind == "mirrored" else tf.distribute.get_strategy()


@pytest.mark.parametrize("kind", _strategies())
@pytest.mark.parametrize(
    "poison",
    [
        pytest.param({"dense_poison": range(BATCH)}, id="dense_only"),
        pytest.param({"emb_poison": range(BATCH)}, id="embedding_only"),
        # Examples 2 and 3 are the second replica's half under MirroredStrategy.
        pytest.param({"dense_poison": [3]}, id="dense_one_example"),
        pytest.param({"emb_poison": [2]}, id="embedding_one_example"),
    ],
)
def test_nonfinite_in_one_part_skips_both_optimizers(kind, poison, mirrored_strategy):
    state, train_step, iterator = _setup(_strategy(kind, mirrored_strategy), _batch(**poison))
    before = _snapshot(state)
    loss = float(train_step(iterator))
    assert np.isfinite(loss)
    after = _snapshot(state)
    assert after.keys() == before.keys()
    for path, value in before.items():
        np.testing.assert_array_equal(after[path], value, err_msg=path)
    assert int(state.embedding_optimizer.iterations.numpy()) == 0
    assert int(state.dense_optimizer.iterations.numpy()) == 0
    assert int(state.embedding_optimizer.skipped_steps.numpy()) == 1
    assert int(state.dense_optimizer.skipped_steps.numpy()) == 1
    assert float(state.loss_scale.scale.numpy()) == INITIAL_SCALE / 2
    assert int(state.step.numpy()) == 1


def _numpy_first_step(model_weights, batch):
    """Table and dense weights after one step: Adagrad (table) and Adam (dense), float64."""
    table, kernel, bias = (np.asarray(w, np.float64) for w in model_weights)
    features, labels = batch
    ids, x = features["ids"], features["x"].astype(np.float64)
    logits = table[ids].sum(axis=(1, 2)) + x @ kernel[:, 0] + bias[0]
    d_logit = (1.0 / (1.0 + np.exp(-logits)) - labels[:, 0]) / BATCH  # mean sigmoid cross-entropy
    g_table = np.zeros_like(table)
    for example, row_ids in enumerate(ids):
        for row in row_ids:
            g_table[row] += d_logit[example]
    g_kernel, g_bias = x.T @ d_logit[:, None], np.array([d_logit.sum()])
    acc = 0.1 + g_table**2
    touched = np.unique(ids)
    new_table = table.copy()
    new_table[touched] = (table - LR * g_table / np.sqrt(acc + 1e-7))[touched]
    beta_1, beta_2, eps = 0.9, 0.999, 1e-7

    def adam(w, g):
        m, v = (1 - beta_1) * g, (1 - beta_2) * g * g
        return w - LR * np.sqrt(1 - beta_2) / (1 - beta_1) * m / (np.sqrt(v) + eps)

    return new_table, adam(kernel, g_kernel), adam(bias, g_bias)


@pytest.mark.parametrize("kind", _strategies())
def test_finite_step_applies_both_optimizers(kind, mirrored_strategy):
    batch = _batch()
    state, train_step, iterator = _setup(_strategy(kind, mirrored_strategy), batch)
    model = state.model
    weights = [model.table.embeddings.numpy(), model.dense.kernel.numpy(), model.dense.bias.numpy()]
    train_step(iterator)
    want_table, want_kernel, want_bias = _numpy_first_step(weights, batch)
    np.testing.assert_allclose(model.table.embeddings.numpy(), want_table, **TOL)
    np.testing.assert_allclose(model.dense.kernel.numpy(), want_kernel, **TOL)
    np.testing.assert_allclose(model.dense.bias.numpy(), want_bias, **TOL)
    assert int(state.embedding_optimizer.iterations.numpy()) == 1
    assert int(state.dense_optimizer.iterations.numpy()) == 1
    assert int(state.embedding_optimizer.skipped_steps.numpy()) == 0
    assert float(state.loss_scale.scale.numpy()) == INITIAL_SCALE
    assert int(state.loss_scale.good_steps.numpy()) == 1


def _worker_main(out_dir):
    """One worker of `test_two_workers_skip_together`: a step poisoned on worker 1 only, then a finite one."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    strategy = tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING))
    assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
    state, train_step, iterator = _setup(strategy, _batch(dense_poison=[3]))
    before = _snapshot(state)
    train_step(iterator)
    after = _snapshot(state)
    result = {"unchanged": all(np.array_equal(after[k], v) for k, v in before.items()),
              "iterations": [int(o.iterations.numpy()) for o in (state.embedding_optimizer, state.dense_optimizer)],
              "scale": float(state.loss_scale.scale.numpy())}
    clean = _batch()
    state, train_step, iterator = _setup(strategy, clean)
    model = state.model
    weights = [model.table.embeddings.numpy(), model.dense.kernel.numpy(), model.dense.bias.numpy()]
    train_step(iterator)
    result["initial"] = [w.tolist() for w in weights]
    result["final"] = [w.numpy().tolist() for w in (model.table.embeddings, model.dense.kernel, model.dense.bias)]
    with open(os.path.join(out_dir, f"worker{index}.json"), "w", encoding="utf-8") as f:
        json.dump(result, f)


@pytest.mark.slow
def test_two_workers_skip_together(tmp_path):
    """MultiWorkerMirroredStrategy: a NaN on worker 1 only must stop worker 0's step too."""
    from components.trainer.local_workers import free_ports

    workers = [f"127.0.0.1:{p}" for p in free_ports(2)]
    procs = []
    for index in range(2):
        env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2",
                   TF_CONFIG=json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tests.components.trainer.test_mixed_precision_step", str(tmp_path)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [proc.communicate(timeout=240)[0] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, out in zip(procs, outputs):
        assert proc.returncode == 0, out[-3000:]
    results = []
    for index in range(2):
        with open(tmp_path / f"worker{index}.json", encoding="utf-8") as f:
            results.append(json.load(f))
    for result in results:
        assert result["unchanged"] and result["iterations"] == [0, 0] and result["scale"] == INITIAL_SCALE / 2
    want = _numpy_first_step(results[0]["initial"], _batch())
    for result in results:
        for got, expected in zip(result["final"], want):
            np.testing.assert_allclose(got, expected, **TOL)


if __name__ == "__main__":
    _worker_main(sys.argv[1])
