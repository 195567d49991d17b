"""Independent NumPy references for every update rule in DESIGN.md section 3.

Written from the equations, not from `optimizers.rules`, and never imports
the package under test. Each `*_step` takes float64 arrays and a dense
gradient and returns the new `(var, slots)`; `apply_sparse` turns a rule
into its lazy sparse form (duplicates summed, touched rows only).
"""

from __future__ import annotations

import numpy as np


def sgd_step(var, slots, g, lr, t):
    return var - lr * g, slots


def momentum_step(var, slots, g, lr, t, momentum=0.9, nesterov=False):
    m = momentum * slots["momentum"] + g
    step = g + momentum * m if nesterov else m
    return var - lr * step, {"momentum": m}


def decaying_sgd_step(var, slots, g, lr, t, decay_rate=0.99):
    return var - lr * decay_rate**t * g, slots


def adam_step(var, slots, g, lr, t, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=0.0):
    var = var - lr * weight_decay * var
    m = beta_1 * slots["m"] + (1 - beta_1) * g
    v = beta_2 * slots["v"] + (1 - beta_2) * g * g
    step = t + 1
    alpha = lr * np.sqrt(1 - beta_2**step) / (1 - beta_1**step)
    return var - alpha * m / (np.sqrt(v) + epsilon), {"m": m, "v": v}


def adagrad_step(var, slots, g, lr, t, epsilon=1e-7):
    acc = slots["accumulator"] + g * g
    return var - lr * g / np.sqrt(acc + epsilon), {"accumulator": acc}


def rowwise_adagrad_step(var, slots, g, lr, t, epsilon=1e-7):
    per_row = (g * g).reshape(g.shape[0], -1).mean(axis=1) if g.ndim > 1 else g * g
    acc = slots["accumulator"] + per_row
    scale = np.sqrt(acc + epsilon).reshape((-1,) + (1,) * (g.ndim - 1)) if g.ndim > 1 else np.sqrt(acc + epsilon)
    return var - lr * g / scale, {"accumulator": acc}


def ftrl_step(var, slots, g, lr, t, lr_power=-0.5, l1=0.0, l2=0.0, l2_shrinkage=0.0, beta=0.0):
    acc, linear = slots["accumulator"], slots["linear"]
    g_shrunk = g + 2 * l2_shrinkage * var
    new_acc = acc + g * g
    sigma = (new_acc ** (-lr_power) - acc ** (-lr_power)) / lr
    linear = linear + g_shrunk - sigma * var
    quadratic = new_acc ** (-lr_power) / lr + 2 * (l2 + beta / (2 * lr))
    new_var = np.where(np.abs(linear) > l1, (np.sign(linear) * l1 - linear) / quadratic, 0.0)
    return new_var, {"accumulator": new_acc, "linear": linear}


def initial_slots(name, var, initial_accumulator_value=0.1):
    """The slots each rule starts from, as NumPy arrays."""
    zeros = np.zeros_like(var)
    if name in ("momentum", "nesterov"):
        return {"momentum": zeros}
    if name in ("adam", "lazy_adam", "adamw"):
        return {"m": zeros, "v": zeros.copy()}
    if name == "adagrad":
        return {"accumulator": np.full_like(var, initial_accumulator_value)}
    if name == "rowwise_adagrad":
        return {"accumulator": np.full(var.shape[:1], initial_accumulator_value)}
    if name == "ftrl":
        return {"accumulator": np.full_like(var, initial_accumulator_value), "linear": zeros}
    return {}


def densify(indices, values, num_rows):
    """The dense gradient of a sparse one: duplicate rows add up."""
    dense = np.zeros((num_rows,) + values.shape[1:])
    np.add.at(dense, indices, values)
    return dense


def apply_sparse(step_fn, var, slots, indices, values, lr, t, **hyper):
    """A lazy sparse step: the rule runs on the distinct touched rows only."""
    rows = np.unique(indices)
    summed = densify(indices, values, var.shape[0])[rows]
    row_slots = {k: s[rows] for k, s in slots.items()}
    new_rows, new_row_slots = step_fn(var[rows], row_slots, summed, lr, t, **hyper)
    var = var.copy()
    var[rows] = new_rows
    slots = {k: s.copy() for k, s in slots.items()}
    for k, s in new_row_slots.items():
        slots[k][rows] = s
    return var, slots


def clip_norm(g, clipnorm):
    norm = np.sqrt((g * g).sum())
    return g * clipnorm / norm if norm > clipnorm else g


def clip_global_norm(grads, clipnorm):
    norm = np.sqrt(sum((g * g).sum() for g in grads))
    scale = min(1.0, clipnorm / norm)
    return [g * scale for g in grads]
