"""The optimizer table the tests run over: constructor, NumPy rule, slots.

`hyper` are the constructor arguments (besides the learning rate) and the
same values under the NumPy reference's argument names.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from tests.optimizers import reference as ref


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    step: Callable
    kwargs: dict  # constructor arguments besides learning_rate
    ref_kwargs: dict  # the same hyperparameters for the reference
    slots: tuple  # slot names, in the implementation's order and the reference's keys
    # exact: sparse == densified gradient for any input (not only when every
    # row is touched).
    exact: bool
    lr: float = 0.1
    optimizer: str | None = None  # the name for `optimizers.get`, when it is not `name`

    def __str__(self):
        return self.name

    @property
    def get_name(self) -> str:
        return self.optimizer or self.name


CASES = [
    Case("sgd", ref.sgd_step, {}, {}, (), exact=True),
    Case("momentum", ref.momentum_step, {"momentum": 0.8}, {"momentum": 0.8}, ("momentum",), exact=False),
    Case("nesterov", ref.momentum_step, {"momentum": 0.8, "nesterov": True}, {"momentum": 0.8, "nesterov": True},
         ("momentum",), exact=False, optimizer="momentum"),
    Case("decaying_sgd", ref.decaying_sgd_step, {"decay_rate": 0.9}, {"decay_rate": 0.9}, (), exact=True),
    Case("adam", ref.adam_step, {"beta_1": 0.8, "beta_2": 0.95, "epsilon": 1e-6},
         {"beta_1": 0.8, "beta_2": 0.95, "epsilon": 1e-6}, ("m", "v"), exact=True, lr=0.01),
    Case("lazy_adam", ref.adam_step, {"beta_1": 0.8, "beta_2": 0.95, "epsilon": 1e-6},
         {"beta_1": 0.8, "beta_2": 0.95, "epsilon": 1e-6}, ("m", "v"), exact=False, lr=0.01),
    Case("adamw", ref.adam_step, {"weight_decay": 0.1, "epsilon": 1e-6},
         {"weight_decay": 0.1, "epsilon": 1e-6}, ("m", "v"), exact=False, lr=0.01),
    Case("adagrad", ref.adagrad_step, {"initial_accumulator_value": 0.2, "epsilon": 1e-6},
         {"epsilon": 1e-6}, ("accumulator",), exact=True),
    Case("rowwise_adagrad", ref.rowwise_adagrad_step, {"initial_accumulator_value": 0.2, "epsilon": 1e-6},
         {"epsilon": 1e-6}, ("accumulator",), exact=True),
    Case("ftrl", ref.ftrl_step,
         {"learning_rate_power": -0.5, "initial_accumulator_value": 0.2, "l1_regularization_strength": 0.01,
          "l2_regularization_strength": 0.02, "l2_shrinkage_regularization_strength": 0.03, "beta": 0.1},
         {"lr_power": -0.5, "l1": 0.01, "l2": 0.02, "l2_shrinkage": 0.03, "beta": 0.1},
         ("accumulator", "linear"), exact=False),
]

BY_NAME = {case.name: case for case in CASES}


def initial_slots(case, var):
    return ref.initial_slots(case.name, var, case.kwargs.get("initial_accumulator_value", 0.1))
