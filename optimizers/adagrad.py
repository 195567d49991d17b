"""Adagrad and RowWiseAdagrad: naturally lazy accumulating optimizers."""

from __future__ import annotations

import keras

from optimizers import hyperparams, rules
from optimizers.base import SparseOptimizer


@keras.saving.register_keras_serializable(package="embedopt")
class Adagrad(SparseOptimizer):
    """Adagrad, equal to `keras.optimizers.Adagrad` on dense gradients.

    Update: `acc <- acc + g**2; var <- var - lr * g / sqrt(acc + epsilon)`.

    Slots: `accumulator`, the variable's shape, starting at
    `initial_accumulator_value` (+1x the variable's memory).

    Sparse path: lazy, and exact as well: a zero gradient leaves a row and
    its accumulator unchanged, so updating only the touched rows gives the
    densified gradient's result.

    Example:
        >>> opt = optimizers.Adagrad(learning_rate=0.05)
    """

    slot_names = ("accumulator",)

    def __init__(self, learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7, name="adagrad", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        owner = type(self).__name__
        self.initial_accumulator_value = hyperparams.check_range(
            owner, "initial_accumulator_value", initial_accumulator_value, low=0.0
        )
        self.epsilon = hyperparams.check_range(owner, "epsilon", epsilon, low=0.0)
        if self.initial_accumulator_value == 0 and self.epsilon == 0:
            # Keras accepts this too, and writes NaN (0 / sqrt(0)) wherever a gradient is 0.
            raise ValueError(
                f"{owner}: `epsilon` and `initial_accumulator_value` are both 0, so a weight whose gradient "
                "is 0 would be divided by sqrt(0) and become NaN; make `epsilon` > 0 (default 1e-7) or "
                "`initial_accumulator_value` > 0"
            )

    def _slot_initializer(self, name):
        return keras.initializers.Constant(self.initial_accumulator_value)

    kernel_rule = "adagrad"

    def _rule(self, var, slots, grad, lr):
        return rules.adagrad(var, slots[0], grad, lr, self._hyper("epsilon", var.dtype))

    def _kernel_hypers(self, dtype, lr):
        return [lr, self._hyper("epsilon", dtype)]

    def get_config(self):
        config = super().get_config()
        config["initial_accumulator_value"] = self.initial_accumulator_value
        config["epsilon"] = hyperparams.serialize(self.epsilon)
        return config


@keras.saving.register_keras_serializable(package="embedopt")
class RowWiseAdagrad(Adagrad):
    """Adagrad with one accumulator per row of the variable.

    Update, per row `i`: `acc[i] <- acc[i] + mean_j(g[i, j]**2);`
    `var[i] <- var[i] - lr * g[i] / sqrt(acc[i] + epsilon)`.

    Slots: `accumulator` of shape `var.shape[:1]`: one float per row instead
    of one per element, so a `rows x dim` table costs `rows` extra floats
    rather than `rows x dim` (a 32x saving at dim 32). For a 1-D variable
    (a bias) each element is a row, which is plain Adagrad.

    Sparse path: lazy and exact, like Adagrad.

    Example:
        >>> opt = optimizers.RowWiseAdagrad(learning_rate=0.05)
    """

    def __init__(self, learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7, name="rowwise_adagrad",
                 **kwargs):
        super().__init__(learning_rate, initial_accumulator_value, epsilon, name=name, **kwargs)

    def _slot_shape(self, var) -> tuple:
        return tuple(var.shape[:1])

    kernel_rule = "rowwise_adagrad"

    def _rule(self, var, slots, grad, lr):
        return rules.rowwise_adagrad(var, slots[0], grad, lr, self._hyper("epsilon", var.dtype))

    def _kernel_hypers(self, dtype, lr):
        return [lr, self._hyper("epsilon", dtype)]
