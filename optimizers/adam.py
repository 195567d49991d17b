"""Adam (exact sparse path), LazyAdam and AdamW (lazy, decoupled decay)."""

from __future__ import annotations

import keras

from optimizers import hyperparams, rules
from optimizers.base import SparseOptimizer


@keras.saving.register_keras_serializable(package="embedopt")
class Adam(SparseOptimizer):
    """Adam, equal to `keras.optimizers.Adam` on dense gradients.

    Update, with `t` = steps applied before this one:
    `m <- m + (1-beta_1)(g - m); v <- v + (1-beta_2)(g**2 - v);`
    `var <- var - lr * sqrt(1-beta_2**(t+1)) / (1-beta_1**(t+1)) * m / (sqrt(v) + epsilon)`.

    Slots: `m` and `v`, each the variable's shape (+2x the variable's memory).

    Sparse path: exact. Duplicate rows are summed, the touched rows get the
    full update, and every other row takes the zero-gradient step (its
    moments decay, its value moves by the decayed momentum), so the result
    equals the densified gradient's. That costs a pass over the whole table
    (without ever building a dense gradient); use `LazyAdam` for embeddings.

    Example:
        >>> opt = optimizers.Adam(learning_rate=1e-3)
    """

    slot_names = ("m", "v")
    lazy = False
    kernel_rule = "adam"  # LazyAdam's and AdamW's sparse path; Adam's own exact path sweeps the table in TF ops

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, name="adam", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        owner = type(self).__name__
        self.beta_1 = hyperparams.check_range(owner, "beta_1", beta_1, low=0.0, high=1.0, high_open=True)
        self.beta_2 = hyperparams.check_range(owner, "beta_2", beta_2, low=0.0, high=1.0, high_open=True)
        # epsilon = 0 divides 0 by 0 wherever m and v are still 0 (a row with a zero gradient).
        self.epsilon = hyperparams.check_range(owner, "epsilon", epsilon, low=0.0, low_open=True)

    def _rule(self, var, slots, grad, lr):
        dtype = var.dtype
        return rules.adam(
            var, slots[0], slots[1], grad, lr,
            self._hyper("beta_1", dtype), self._hyper("beta_2", dtype), self._hyper("epsilon", dtype),
            self._step(dtype),
        )

    def _kernel_hypers(self, dtype, lr):
        return [lr, self._hyper("beta_1", dtype), self._hyper("beta_2", dtype), self._hyper("epsilon", dtype),
                self._step(dtype)]

    def get_config(self):
        config = super().get_config()
        for key in ("beta_1", "beta_2", "epsilon"):
            config[key] = hyperparams.serialize(getattr(self, key))
        return config


@keras.saving.register_keras_serializable(package="embedopt")
class LazyAdam(Adam):
    """Adam whose sparse path updates only the rows the batch touched.

    Update: Adam's rule (moments and bias correction with step `t+1`) on the
    touched rows of `m`, `v` and `var`; on dense gradients it equals `Adam`.

    Slots: `m` and `v` (+2x the variable's memory).

    Sparse path: lazy, O(rows touched x dim) per step. Rows not looked up
    keep their value and moments; this is the usual choice for embedding
    tables, where Adam's exact path would sweep the whole table every step.

    Example:
        >>> opt = optimizers.LazyAdam(learning_rate=1e-3)
        >>> model.compile(optimizer=opt, loss="binary_crossentropy")
    """

    lazy = True

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, name="lazy_adam", **kwargs):
        super().__init__(learning_rate, beta_1, beta_2, epsilon, name=name, **kwargs)


@keras.saving.register_keras_serializable(package="embedopt")
class AdamW(LazyAdam):
    """LazyAdam with decoupled weight decay, as `keras.optimizers.AdamW` on dense gradients.

    Update: `var <- var - lr * weight_decay * var`, then the Adam rule.

    Slots: `m` and `v` (+2x the variable's memory).

    Sparse path: lazy; the decay, like the rule, touches only the rows the
    batch looked up (a row that is never seen is never decayed). Use
    `exclude_from_weight_decay(var_names=[...])` to spare some variables.

    Example:
        >>> opt = optimizers.AdamW(learning_rate=1e-3, weight_decay=0.004)
    """

    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 name="adamw", **kwargs):
        if weight_decay is None:
            raise ValueError("AdamW: `weight_decay` must be a number >= 0, got None")
        super().__init__(learning_rate, beta_1, beta_2, epsilon, name=name, weight_decay=weight_decay, **kwargs)
