"""One custom training loop for every strategy (`strategy.run` per step).

Keras 3's `fit` fails under `MultiWorkerMirroredStrategy`, so training is a
`tf.function` step run on each replica. The per-replica loss is divided by
the GLOBAL batch size (`tf.nn.compute_average_loss`): the optimizers
all-reduce gradients with SUM, which then gives the gradient of the mean
loss over the global batch. Embedding tables and dense weights go to two
optimizers, each applying its own variables in the same replica step.
Dynamic tables (`optimizers.DynamicEmbedding`) reset the optimizer slots of
the rows their forward pass (re)assigned after the gradient and before
either optimizer applies it, as that layer's contract asks.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import keras
import numpy as np
import tensorflow as tf

from components.trainer import artifacts
from components.trainer.loss_scale import DynamicLossScale

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainState:
    """What a run checkpoints: model, both optimizers, the step counter (and the loss scale)."""

    model: keras.Model
    embedding_optimizer: keras.optimizers.Optimizer
    dense_optimizer: keras.optimizers.Optimizer
    step: tf.Variable
    loss_scale: DynamicLossScale | None = None

    def checkpoint(self) -> tf.train.Checkpoint:
        items = dict(model=self.model, embedding_optimizer=self.embedding_optimizer,
                     dense_optimizer=self.dense_optimizer, step=self.step)
        if self.loss_scale is not None:
            items["loss_scale"] = self.loss_scale
        dynamic = self.model.dynamic_tables() if hasattr(self.model, "dynamic_tables") else []
        if dynamic:
            # The layers themselves: keys, stamps, counters and the key -> row hash table, which a Keras 3 model
            # does not hand to tf.train.Checkpoint (fixed-table checkpoints keep their layout).
            items["dynamic_tables"] = dynamic
        return tf.train.Checkpoint(**items)


def build_optimizers(state_model, config, mixed_precision: bool):
    """Both optimizers, built on their variables (call inside `strategy.scope()`)."""
    import optimizers

    nonfinite = "skip" if mixed_precision else "raise"
    emb_kwargs = {"nonfinite": nonfinite}
    dense_kwargs = {"nonfinite": nonfinite}
    if config.learning_rate is not None:
        emb_kwargs["learning_rate"] = config.learning_rate
    if config.dense_learning_rate is not None:
        dense_kwargs["learning_rate"] = config.dense_learning_rate
    embedding_optimizer = optimizers.get(config.optimizer, **emb_kwargs)
    dense_optimizer = optimizers.get(config.dense_optimizer, **dense_kwargs)
    embedding_optimizer.build(state_model.embedding_variables())
    dense_optimizer.build(state_model.dense_variables())
    return embedding_optimizer, dense_optimizer


def make_train_step(strategy: tf.distribute.Strategy, state: TrainState, global_batch_size: int):
    """A tf.function taking a distributed iterator; runs one step, returns the mean loss.

    With a loss scale (mixed precision) one decision covers the whole step,
    as in Keras's `LossScaleOptimizer`: both optimizers apply their
    gradients, or, when any gradient of either optimizer on any replica
    holds NaN or Inf, neither does (variables, slots and `iterations` stay
    as they were, each optimizer's `skipped_steps` counts the step) and the
    loss scale drops.
    """
    from optimizers.sparse import finite_flags

    model = state.model
    emb_vars, dense_vars = model.embedding_variables(), model.dense_variables()
    n_emb = len(emb_vars)
    scaler = state.loss_scale
    dynamic_tables = model.dynamic_tables() if hasattr(model, "dynamic_tables") else []

    def replica_gradients(features, labels):
        with tf.GradientTape() as tape:
            logits = tf.cast(model(features, training=True), tf.float32)
            per_example = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch_size)
            target = scaler.scale_loss(loss) if scaler is not None else loss
        grads = tape.gradient(target, emb_vars + dense_vars)
        for table in dynamic_tables:
            table.reset_slots(state.embedding_optimizer)
        if scaler is not None:
            grads = scaler.unscale(grads)
        return loss, grads

    def apply_both(grads):
        state.embedding_optimizer.apply_gradients(zip(grads[:n_emb], emb_vars))
        state.dense_optimizer.apply_gradients(zip(grads[n_emb:], dense_vars))

    def replica_step(features, labels):
        loss, grads = replica_gradients(features, labels)
        apply_both(grads)
        return loss

    def replica_gradients_and_flag(features, labels):
        loss, grads = replica_gradients(features, labels)
        finite = tf.reduce_all(finite_flags(grads))
        return loss, grads, tf.cast(tf.logical_not(finite), tf.float32)

    def skip_step():
        state.embedding_optimizer.skipped_steps.assign_add(1)
        state.dense_optimizer.skipped_steps.assign_add(1)

    @tf.function
    def train_step(iterator):
        features, labels = next(iterator)
        if scaler is None:
            per_replica_loss = strategy.run(replica_step, args=(features, labels))
        else:
            per_replica_loss, grads, nonfinite = strategy.run(replica_gradients_and_flag, args=(features, labels))
            # Summed over replicas (an all-reduce under MultiWorkerMirroredStrategy), so every
            # replica takes the same branch. The cond is taken in cross-replica context: a
            # branch that calls `merge_call` (as `apply_gradients` does) cannot sit in a replica one.
            finite = strategy.reduce(tf.distribute.ReduceOp.SUM, nonfinite, axis=None) == 0.0
            tf.cond(finite, lambda: strategy.run(apply_both, args=(grads,)), skip_step)
            scaler.update(tf.logical_not(finite))
        state.step.assign_add(1)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica_loss, axis=None)

    return train_step


def make_predict_step(strategy: tf.distribute.Strategy, model: keras.Model):
    """A tf.function returning (probabilities, labels) of one global batch, gathered on every worker."""

    def replica_predict(features, labels):
        return tf.sigmoid(tf.cast(model(features, training=False), tf.float32)), labels

    @tf.function
    def predict_step(iterator):
        features, labels = next(iterator)
        probs, labels = strategy.run(replica_predict, args=(features, labels))
        return strategy.gather(probs, axis=0), strategy.gather(labels, axis=0)

    return predict_step


def evaluate(strategy, model, eval_iterator, eval_steps: int, max_examples: int | None = None,
             predict_step=None) -> dict[str, float]:
    """AUC and log loss over `eval_steps` global batches (identical on every worker).

    The eval dataset repeats, so enough steps to cover the split end with a
    batch that wraps around to its first rows; `max_examples` (the split's
    row count) cuts those off. With one input pipeline, reading in file
    order, the result is then exactly the split, each row once. Pass the
    `make_predict_step` of an earlier call to evaluate again without tracing.
    """
    predict_step = predict_step or make_predict_step(strategy, model)
    auc = keras.metrics.AUC(num_thresholds=10_001)
    log_loss = keras.metrics.BinaryCrossentropy()
    probs, labels = [], []
    for _ in range(eval_steps):
        p, y = predict_step(eval_iterator)
        probs.append(p.numpy())
        labels.append(y.numpy())
    probs, labels = np.concatenate(probs)[:max_examples], np.concatenate(labels)[:max_examples]
    auc.update_state(labels, probs)
    log_loss.update_state(labels[:, None], probs[:, None])
    return {
        "eval_auc": float(auc.result()),
        "eval_log_loss": float(log_loss.result()),
        "eval_examples": int(len(labels)),
        "eval_positive_rate": float(labels.mean()),
    }


@dataclasses.dataclass
class TrainResult:
    steps_run: int
    losses: list[tuple[int, float]]  # (step, mean loss since the previous point)
    step_seconds: list[float]


def train(train_step, iterator, state: TrainState, train_steps: int, global_batch_size: int, *,
          checkpoint_every: int, save_checkpoint, log_every: int, progress: bool, summary_writer) -> TrainResult:
    """Runs steps until `state.step == train_steps`, saving every `checkpoint_every` steps."""
    start_step = int(state.step.numpy())
    remaining = train_steps - start_step
    bar = keras.utils.Progbar(train_steps, stateful_metrics=["loss", "examples/s"]) if progress and remaining > 0 else None
    losses, step_seconds, window = [], [], []
    tick = time.perf_counter()
    for _ in range(remaining):
        loss = float(train_step(iterator).numpy())
        now = time.perf_counter()
        step_seconds.append(now - tick)
        tick = now
        step = int(state.step.numpy())
        window.append(loss)
        if step % log_every == 0 or step == train_steps:
            mean = float(np.mean(window))
            losses.append((step, mean))
            window = []
            recent = step_seconds[-log_every:]
            rate = global_batch_size * len(recent) / max(sum(recent), 1e-9)
            with summary_writer.as_default():
                artifacts.write_scalar("loss", mean, step=step)
                artifacts.write_scalar("examples_per_second", rate, step=step)
            if bar is None:
                log.info("step %d/%d loss %.4f examples/s %.0f", step, train_steps, mean, rate)
        if bar is not None:
            recent = step_seconds[-20:]
            bar.update(step, [("loss", loss), ("examples/s", global_batch_size * len(recent) / max(sum(recent), 1e-9))])
        if step % checkpoint_every == 0 and step < train_steps:
            save_checkpoint(step)
    return TrainResult(steps_run=remaining if remaining > 0 else 0, losses=losses, step_seconds=step_seconds)
