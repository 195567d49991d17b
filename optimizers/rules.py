"""Update rules as pure TensorFlow functions.

Each function takes the current values of a variable and its slots (the whole
tensor on the dense path, the gathered rows on the sparse path), the gradient
for those same rows and the hyperparameters as tensors, and returns the new
values as a tuple `(var, *slots)`. Nothing here reads or writes a variable:
the optimizer shells (`optimizers.base`, `optimizers.legacy`) gather, call a
rule and scatter, so the dense and the sparse path run the same math.

`step` is the number of optimizer steps applied before this one (0 on the
first step), as a float tensor of the variable's dtype.
"""

from __future__ import annotations

import tensorflow as tf


def sgd(var, grad, lr):
    """Plain gradient descent: `var -= lr * g`."""
    return (var - lr * grad,)


def momentum(var, m, grad, lr, momentum, nesterov=False):
    """Heavy-ball momentum, the classic recipe's rule (not Keras's).

    `m = momentum * m + g; var -= lr * m`; with `nesterov` (a Python bool),
    `var -= lr * (g + momentum * m)` with the new `m` (Sutskever et al.'s
    look-ahead, as PyTorch's SGD computes it).
    """
    new_m = momentum * m + grad
    if nesterov:
        return (var - lr * (grad + momentum * new_m), new_m)
    return (var - lr * new_m, new_m)


def decaying_sgd(var, grad, lr, decay_rate, step):
    """SGD whose learning rate decays per optimizer step.

    `var -= lr * decay_rate**step * g`, so the first step uses `lr`.
    """
    return (var - lr * tf.pow(decay_rate, step) * grad,)


def adam(var, m, v, grad, lr, beta_1, beta_2, epsilon, step):
    """Adam, written as `keras.optimizers.Adam` computes it.

    With `t = step + 1`:
    `m += (1 - beta_1) * (g - m)`, `v += (1 - beta_2) * (g**2 - v)`,
    `var -= lr * sqrt(1 - beta_2**t) / (1 - beta_1**t) * m / (sqrt(v) + epsilon)`.
    """
    local_step = step + 1.0
    alpha = lr * tf.sqrt(1.0 - tf.pow(beta_2, local_step)) / (1.0 - tf.pow(beta_1, local_step))
    new_m = m + (grad - m) * (1.0 - beta_1)
    new_v = v + (tf.square(grad) - v) * (1.0 - beta_2)
    new_var = var - (new_m * alpha) / (tf.sqrt(new_v) + epsilon)
    return (new_var, new_m, new_v)


def adagrad(var, acc, grad, lr, epsilon):
    """Adagrad, as `keras.optimizers.Adagrad`: `acc += g**2; var -= lr*g/sqrt(acc+eps)`."""
    new_acc = acc + tf.square(grad)
    return (var - lr * grad / tf.sqrt(new_acc + epsilon), new_acc)


def rowwise_adagrad(var, acc, grad, lr, epsilon):
    """Adagrad with one accumulator per row (first axis) of `var`.

    `acc += mean(g**2 over all axes but the first); var -= lr*g/sqrt(acc+eps)`,
    the accumulator broadcast along each row. `acc` has shape `var.shape[:1]`
    (a scalar for a scalar variable).
    """
    rank = grad.shape.rank
    if rank is None:
        raise ValueError("rowwise_adagrad needs gradients of known rank")
    row_axes = list(range(1, rank))
    mean_sq = tf.reduce_mean(tf.square(grad), axis=row_axes) if row_axes else tf.square(grad)
    new_acc = acc + mean_sq
    denom = tf.sqrt(new_acc + epsilon)
    if rank > 1:
        denom = tf.reshape(denom, [-1] + [1] * (rank - 1))
    return (var - lr * grad / denom, new_acc)


def ftrl(var, acc, linear, grad, lr, lr_power, l1, l2, l2_shrinkage, beta):
    """FTRL-Proximal, as `keras.optimizers.Ftrl` computes it.

    `g' = g + 2*l2_shrinkage*var; new_acc = acc + g**2;
    linear += g' - (new_acc**-p - acc**-p) / lr * var;
    quadratic = new_acc**-p / lr + 2*(l2 + beta/(2*lr));
    var = (clip(linear, -l1, l1) - linear) / quadratic`, with `p = lr_power`.
    """
    adjusted_l2 = l2 + beta / (2.0 * lr)
    grad_to_use = grad + 2.0 * l2_shrinkage * var
    new_acc = acc + tf.square(grad)
    new_linear = linear + grad_to_use - (tf.pow(new_acc, -lr_power) - tf.pow(acc, -lr_power)) / lr * var
    quadratic = tf.pow(new_acc, -lr_power) / lr + 2.0 * adjusted_l2
    new_var = (tf.clip_by_value(new_linear, -l1, l1) - new_linear) / quadratic
    return (new_var, new_acc, new_linear)


def decoupled_weight_decay(var, lr, weight_decay):
    """Decoupled weight decay (AdamW): `var -= lr * weight_decay * var`."""
    return var - var * weight_decay * lr
