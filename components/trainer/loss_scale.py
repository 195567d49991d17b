"""Dynamic loss scaling for mixed precision, shared by both optimizers.

Keras's `LossScaleOptimizer` wraps one optimizer; this trainer has two
(embeddings and dense), so the loss is scaled once here and gradients are
unscaled before both. `loop.make_train_step` then takes one decision for the
step: if any gradient of either optimizer, on any replica, holds NaN or Inf
(a 0/1 flag summed over replicas), neither optimizer applies; otherwise both
do. `update` gets that decision: the scale halves after a skipped step and
doubles after `growth_steps` good ones.
"""

from __future__ import annotations

import tensorflow as tf


class DynamicLossScale(tf.Module):
    def __init__(self, initial_scale: float = 2.0**15, growth_steps: int = 2000):
        super().__init__(name="loss_scale")
        agg = tf.VariableAggregation.ONLY_FIRST_REPLICA
        self.scale = tf.Variable(initial_scale, dtype=tf.float32, trainable=False, aggregation=agg, name="scale")
        self.good_steps = tf.Variable(0, dtype=tf.int64, trainable=False, aggregation=agg, name="good_steps")
        self.growth_steps = growth_steps

    def scale_loss(self, loss):
        return loss * tf.cast(self.scale, loss.dtype)

    def unscale(self, grads):
        inverse = 1.0 / self.scale
        return [
            tf.IndexedSlices(tf.cast(g.values, tf.float32) * inverse, g.indices, g.dense_shape)
            if isinstance(g, tf.IndexedSlices) else tf.cast(g, tf.float32) * inverse
            for g in grads
        ]

    def update(self, skipped):
        """Cross-replica: `skipped` is a bool scalar, true when the step was not applied."""
        grow = tf.logical_and(tf.logical_not(skipped), self.good_steps + 1 >= self.growth_steps)
        new_scale = tf.where(skipped, self.scale * 0.5, tf.where(grow, self.scale * 2.0, self.scale))
        self.scale.assign(tf.maximum(new_scale, 1.0))
        reset = tf.logical_or(skipped, grow)
        self.good_steps.assign(tf.where(reset, tf.constant(0, tf.int64), self.good_steps + 1))
