"""The rule table the kernel tests run over, with its two references.

For each rule: the kernel's hypers, a NumPy step from `tests.optimizers.reference`
(written from the equations), and the TF path the optimizers run today
(gather + the pure rule from `optimizers.rules` + scatter).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import tensorflow as tf

from optimizers import rules, sparse
from optimizers.kernels import ops as kops
from tests.optimizers import reference as ref


def _nesterov_step(var, slots, g, momentum, lr):
    m = momentum * slots["momentum"] + g
    return var - lr * (g + momentum * m), {"momentum": m}


def _normal(scale):
    return lambda rng, shape: rng.standard_normal(shape) * scale


def _positive(low):
    return lambda rng, shape: low + rng.random(shape)


@dataclasses.dataclass(frozen=True)
class RuleCase:
    name: str
    rule: str
    hypers: tuple  # the kernel's, in `kops.HYPERS[rule]` order (without weight decay)
    numpy_step: Callable  # (var, slots by reference key, summed grad) -> (var, slots)
    ref_slots: tuple  # the reference's slot keys, in the kernel's slot order
    slot_init: tuple  # one (rng, shape) -> array per slot
    tf_rule: Callable | None  # (var rows, slot rows, grad, hyper tensors) -> (var, *slots); None: no TF twin
    nesterov: bool = False
    rowwise: bool = False  # slots of shape [rows]
    # float32 absolute tolerance: FTRL's `linear` is a difference of terms up
    # to |(n'**-p - n**-p) / lr * var| ~ 50 here, so float32 rounding of those
    # terms (~50 * 6e-8) shows in it whichever order computes it.
    atol32: float = 1e-6

    def __str__(self):
        return self.name


CASES = [
    RuleCase("sgd", "sgd", (0.1,), lambda v, s, g: ref.sgd_step(v, s, g, 0.1, 0), (), (),
             lambda v, s, g, h: rules.sgd(v, g, h[0])),
    RuleCase("momentum", "momentum", (0.1, 0.8), lambda v, s, g: ref.momentum_step(v, s, g, 0.1, 0, momentum=0.8),
             ("momentum",), (_normal(0.3),), lambda v, s, g, h: rules.momentum(v, s[0], g, h[0], h[1])),
    RuleCase("nesterov", "momentum", (0.1, 0.8), lambda v, s, g: _nesterov_step(v, s, g, 0.8, 0.1),
             ("momentum",), (_normal(0.3),), None, nesterov=True),
    RuleCase("adagrad", "adagrad", (0.1, 1e-6), lambda v, s, g: ref.adagrad_step(v, s, g, 0.1, 0, epsilon=1e-6),
             ("accumulator",), (_positive(0.2),), lambda v, s, g, h: rules.adagrad(v, s[0], g, h[0], h[1])),
    RuleCase("rowwise_adagrad", "rowwise_adagrad", (0.1, 1e-6),
             lambda v, s, g: ref.rowwise_adagrad_step(v, s, g, 0.1, 0, epsilon=1e-6), ("accumulator",),
             (_positive(0.2),), lambda v, s, g, h: rules.rowwise_adagrad(v, s[0], g, h[0], h[1]), rowwise=True),
    RuleCase("adam", "adam", (0.01, 0.8, 0.95, 1e-6, 2.0),
             lambda v, s, g: ref.adam_step(v, s, g, 0.01, 2, beta_1=0.8, beta_2=0.95, epsilon=1e-6), ("m", "v"),
             (_normal(0.1), _positive(0.01)), lambda v, s, g, h: rules.adam(v, s[0], s[1], g, *h)),
    RuleCase("ftrl", "ftrl", (0.1, -0.5, 0.01, 0.02, 0.03, 0.1),
             lambda v, s, g: ref.ftrl_step(v, s, g, 0.1, 0, lr_power=-0.5, l1=0.01, l2=0.02, l2_shrinkage=0.03,
                                           beta=0.1),
             ("accumulator", "linear"), (_positive(0.2), _normal(0.1)),
             lambda v, s, g, h: rules.ftrl(v, s[0], s[1], g, *h), atol32=2e-5),
    RuleCase("ftrl_pow", "ftrl", (0.1, -0.7, 0.01, 0.0, 0.0, 0.0),
             lambda v, s, g: ref.ftrl_step(v, s, g, 0.1, 0, lr_power=-0.7, l1=0.01), ("accumulator", "linear"),
             (_positive(0.2), _normal(0.1)), lambda v, s, g, h: rules.ftrl(v, s[0], s[1], g, *h), atol32=2e-5),
]
BY_NAME = {case.name: case for case in CASES}


@dataclasses.dataclass
class Problem:
    """A table, its slots and a sparse gradient, as NumPy arrays."""

    var: np.ndarray
    slots: list
    ids: np.ndarray
    values: np.ndarray


def make_problem(case, ids, width, dtype, seed=0, rows=11):
    rng = np.random.default_rng(seed)
    np_dtype = np.dtype(dtype)
    var = rng.standard_normal((rows, width)).astype(np_dtype)
    shape = (rows,) if case.rowwise else (rows, width)
    slots = [init(rng, shape).astype(np_dtype) for init in case.slot_init]
    values = rng.standard_normal((len(ids), width)).astype(np_dtype)
    return Problem(var, slots, np.asarray(ids), values)


def run_kernel(case, problem, index_dtype, weight_decay=0.0, assume_unique=False, dtype=None):
    """Runs the kernel on fresh variables; returns the new (var, slots) as NumPy arrays."""
    dtype = dtype or tf.as_dtype(problem.var.dtype)
    var = tf.Variable(tf.cast(problem.var, dtype))
    slots = [tf.Variable(tf.cast(s, dtype)) for s in problem.slots]
    hypers = list(case.hypers) + ([weight_decay] if weight_decay else [])
    kops.sparse_apply(var, slots, tf.constant(problem.ids, index_dtype), tf.cast(problem.values, dtype), case.rule,
                      hypers, nesterov=case.nesterov, weight_decay=bool(weight_decay), assume_unique=assume_unique)
    return var.numpy(), [s.numpy() for s in slots]


def run_tf_path(case, problem, index_dtype, weight_decay=0.0):
    """The optimizers' sparse path: dedup, gather, rules.*, scatter."""
    dtype = tf.as_dtype(problem.var.dtype)
    var = tf.Variable(problem.var)
    slots = [tf.Variable(s) for s in problem.slots]
    grad = sparse.dedup_indexed_slices(
        tf.IndexedSlices(tf.constant(problem.values), tf.constant(problem.ids, index_dtype), var.shape))
    hypers = [tf.constant(h, dtype) for h in case.hypers]
    rows = tf.gather(var, grad.indices)
    if weight_decay:
        rows = rules.decoupled_weight_decay(rows, hypers[0], tf.constant(weight_decay, dtype))
    new_rows, *new_slots = case.tf_rule(rows, [tf.gather(s, grad.indices) for s in slots], grad.values, hypers)
    var.scatter_update(tf.IndexedSlices(new_rows, grad.indices))
    for slot, value in zip(slots, new_slots):
        slot.scatter_update(tf.IndexedSlices(value, grad.indices))
    return var.numpy(), [s.numpy() for s in slots]


def run_numpy(case, problem, weight_decay=0.0):
    """The NumPy reference in float64: touched rows only, duplicates summed."""
    rows = np.unique(problem.ids)
    grad = ref.densify(problem.ids, problem.values.astype(np.float64), problem.var.shape[0])[rows]
    var = problem.var.astype(np.float64)
    slots = {key: s.astype(np.float64) for key, s in zip(case.ref_slots, problem.slots)}
    var_rows = var[rows]
    if weight_decay:
        var_rows = var_rows - var_rows * weight_decay * case.hypers[0]
    new_rows, new_slots = case.numpy_step(var_rows, {k: s[rows] for k, s in slots.items()}, grad)
    var[rows] = new_rows
    for key, value in new_slots.items():
        slots[key][rows] = value
    return var, [slots[key] for key in case.ref_slots]
