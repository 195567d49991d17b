"""The training step order that `DynamicEmbedding` needs: forward, reset the slots of reassigned rows, apply."""

from __future__ import annotations

import tensorflow as tf


def train_step_with_reset(model, optimizer, loss_fn, inputs, targets, tables):
    """One training step in the order `DynamicEmbedding` needs: forward, reset slots, apply.

    Args:
        model: a callable Keras model or layer.
        optimizer: an embedopt optimizer.
        loss_fn: `loss_fn(targets, predictions)` -> scalar.
        inputs, targets: one batch.
        tables: the `DynamicEmbedding` layers of `model`.

    Returns:
        The loss.
    """
    with tf.GradientTape() as tape:
        loss = loss_fn(targets, model(inputs, training=True))
    variables = model.trainable_variables
    grads = tape.gradient(loss, variables)
    for table in tables:
        table.reset_slots(optimizer)
    optimizer.apply_gradients(zip(grads, variables))
    return loss
