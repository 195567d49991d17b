"""FTRL-Proximal with a lazy sparse path."""

from __future__ import annotations

import keras

from optimizers import hyperparams, rules
from optimizers.base import SparseOptimizer

_HYPERS = (
    "learning_rate_power",
    "l1_regularization_strength",
    "l2_regularization_strength",
    "l2_shrinkage_regularization_strength",
    "beta",
)


@keras.saving.register_keras_serializable(package="embedopt")
class Ftrl(SparseOptimizer):
    """FTRL-Proximal, equal to `keras.optimizers.Ftrl` on dense gradients.

    Update, with `p = learning_rate_power`, `g' = g + 2*l2_shrinkage*var`:
    `n' = n + g**2; z <- z + g' - (n'**-p - n**-p) / lr * var;`
    `var <- (clip(z, -l1, l1) - z) / (n'**-p / lr + 2*(l2 + beta/(2*lr))); n <- n'`.

    Slots: `accumulator` (n, starting at `initial_accumulator_value`) and
    `linear` (z), each the variable's shape (+2x the variable's memory).

    Sparse path: lazy; only touched rows of `var`, `n` and `z` change. With
    L1/L2 regularization a dense step would also move untouched rows (their
    shrinkage term), so sparse equals dense only when every row is touched.

    Example:
        >>> opt = optimizers.Ftrl(learning_rate=0.05, l1_regularization_strength=1e-4)
    """

    slot_names = ("accumulator", "linear")

    def __init__(self, learning_rate=0.001, learning_rate_power=-0.5, initial_accumulator_value=0.1,
                 l1_regularization_strength=0.0, l2_regularization_strength=0.0,
                 l2_shrinkage_regularization_strength=0.0, beta=0.0, name="ftrl", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        check = hyperparams.check_range
        hyperparams.check_range("Ftrl", "learning_rate", learning_rate, low=0.0, low_open=True)
        self.learning_rate_power = check("Ftrl", "learning_rate_power", learning_rate_power, high=0.0)
        self.initial_accumulator_value = check("Ftrl", "initial_accumulator_value", initial_accumulator_value, low=0.0)
        for name_, value in (
            ("l1_regularization_strength", l1_regularization_strength),
            ("l2_regularization_strength", l2_regularization_strength),
            ("l2_shrinkage_regularization_strength", l2_shrinkage_regularization_strength),
            ("beta", beta),
        ):
            setattr(self, name_, check("Ftrl", name_, value, low=0.0))
        self._check_denominator()

    def _check_denominator(self):
        """Refuses settings whose denominator `n'**-p / lr + 2*l2 + beta/lr` is 0 for a zero gradient.

        Keras accepts them and writes NaN into such weights; with an
        accumulator that starts above 0, or any L2 or beta, the step is finite.
        Callables are not checked (their value is only known per step).
        """
        if (self.initial_accumulator_value == 0 and not callable(self.learning_rate_power)
                and self.learning_rate_power < 0 and self.l2_regularization_strength == 0 and self.beta == 0):
            raise ValueError(
                "Ftrl: `initial_accumulator_value` is 0 with no L2 and no beta, so a weight whose gradient is 0 "
                "would be divided by 0 and become NaN; make `initial_accumulator_value` > 0 (default 0.1), or "
                "`l2_regularization_strength` or `beta` > 0"
            )

    def _slot_initializer(self, name):
        if name == "accumulator":
            return keras.initializers.Constant(self.initial_accumulator_value)
        return "zeros"

    kernel_rule = "ftrl"

    def _rule(self, var, slots, grad, lr):
        dtype = var.dtype
        return rules.ftrl(var, slots[0], slots[1], grad, lr, *(self._hyper(h, dtype) for h in _HYPERS))

    def _kernel_hypers(self, dtype, lr):
        return [lr, *(self._hyper(h, dtype) for h in _HYPERS)]

    def get_config(self):
        config = super().get_config()
        config["initial_accumulator_value"] = self.initial_accumulator_value
        for key in _HYPERS:
            config[key] = hyperparams.serialize(getattr(self, key))
        return config
