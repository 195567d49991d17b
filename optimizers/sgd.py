"""SGD, heavy-ball Momentum and DecayingSGD: the classic recipe's optimizers."""

from __future__ import annotations

import keras
import tensorflow as tf

from optimizers import hyperparams, rules
from optimizers.base import SparseOptimizer


@keras.saving.register_keras_serializable(package="embedopt")
class SGD(SparseOptimizer):
    """Plain stochastic gradient descent.

    Update: `var <- var - lr * g`.

    Slots: none (no memory beyond the variable).

    Sparse path: the touched rows are updated by a scatter, duplicate indices
    summed first; exact (identical to the densified gradient).

    Example:
        >>> model.compile(optimizer=optimizers.SGD(learning_rate=0.1), loss="mse")
    """

    def __init__(self, learning_rate=0.01, name="sgd", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)

    kernel_rule = "sgd"

    def _rule(self, var, slots, grad, lr):
        return rules.sgd(var, grad, lr)

    def _kernel_hypers(self, dtype, lr):
        return [lr]


@keras.saving.register_keras_serializable(package="embedopt")
class Momentum(SparseOptimizer):
    """Heavy-ball momentum, the classic recipe's rule (not Keras's SGD momentum).

    Update: `m <- momentum * m + g; var <- var - lr * m`; with
    `nesterov=True`, `var <- var - lr * (g + momentum * m)` (the new `m`).

    Slots: `momentum`, same shape as the variable (+1x the variable's memory).

    Sparse path: lazy. Only the touched rows of `m` and `var` change; rows
    the batch did not look up keep their momentum until they are seen again.

    Args:
        learning_rate: float >= 0, schedule or callable.
        momentum: float in [0, 1) or callable.
        nesterov: use Nesterov's look-ahead (default False).

    Example:
        >>> opt = optimizers.Momentum(learning_rate=0.05, momentum=0.9)
    """

    slot_names = ("momentum",)

    def __init__(self, learning_rate=0.01, momentum=0.9, nesterov=False, name="momentum", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.momentum = hyperparams.check_range("Momentum", "momentum", momentum, low=0.0, high=1.0, high_open=True)
        if not isinstance(nesterov, bool):
            raise ValueError(f"Momentum: `nesterov` must be True or False, got {nesterov!r}")
        self.nesterov = nesterov

    kernel_rule = "momentum"

    def _rule(self, var, slots, grad, lr):
        return rules.momentum(var, slots[0], grad, lr, self._hyper("momentum", var.dtype), self.nesterov)

    def _kernel_hypers(self, dtype, lr):
        return [lr, self._hyper("momentum", dtype)]

    def _kernel_options(self):
        return {"nesterov": self.nesterov}

    def get_config(self):
        config = super().get_config()
        config["momentum"] = hyperparams.serialize(self.momentum)
        config["nesterov"] = self.nesterov
        return config


@keras.saving.register_keras_serializable(package="embedopt")
class DecayingSGD(SparseOptimizer):
    """SGD with a learning rate that decays once per optimizer step.

    Update: `var <- var - lr * decay_rate**t * g`, where `t` is the number of
    optimizer steps applied before this one (`iterations`), so the first step
    uses `lr`. The counter advances once per step, however many variables the
    step updates (the classic recipe counted per variable).

    Slots: none.

    Sparse path: scatter on the touched rows; exact.

    Args:
        learning_rate: float >= 0, schedule or callable.
        decay_rate: float in (0, 1] or callable.

    Example:
        >>> opt = optimizers.DecayingSGD(learning_rate=0.1, decay_rate=0.99)
    """

    def __init__(self, learning_rate=0.01, decay_rate=0.99, name="decaying_sgd", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.decay_rate = hyperparams.check_range("DecayingSGD", "decay_rate", decay_rate, low=0.0, high=1.0, low_open=True)

    kernel_rule = "sgd"

    def _rule(self, var, slots, grad, lr):
        return rules.decaying_sgd(var, grad, lr, self._hyper("decay_rate", var.dtype), self._step(var.dtype))

    def _kernel_hypers(self, dtype, lr):
        return [lr * tf.pow(self._hyper("decay_rate", dtype), self._step(dtype))]

    def get_config(self):
        config = super().get_config()
        config["decay_rate"] = hyperparams.serialize(self.decay_rate)
        return config
