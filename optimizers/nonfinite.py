"""What a step does when a gradient or a per-step hyperparameter is NaN or Inf.

Numbers given to an optimizer are checked once, when it is made
(`hyperparams.check_range`). A learning-rate schedule, a callable, or a
learning-rate variable that someone assigned is only known per step, and one
NaN there writes NaN into every row the step touches; so these values are
checked with the gradients, before anything is written, and handled the same
way: `nonfinite="raise"` stops the step with an error that says which it was,
`"skip"` leaves variables, slots and `iterations` as they were and counts the
step in `skipped_steps`.
"""

from __future__ import annotations

import tensorflow as tf

MODES = ("raise", "skip")


def finite_scalars(values) -> tf.Tensor:
    """A bool vector: whether each hyperparameter value is finite.

    Checked in float64, so an integer-valued callable needs no special case
    and a float64 schedule is not judged by a narrower type.
    """
    return tf.stack([tf.reduce_all(tf.math.is_finite(tf.cast(v, tf.float64))) for v in values])


def per_step_hypers(optimizer, learning_rate) -> tuple[list[str], list]:
    """The hyperparameters known only per step: the learning rate, and any other given as a callable.

    Returns their names and this step's values. The other hyperparameters are
    the optimizer's public attributes (`beta_1`, `momentum`, `weight_decay`,
    ...) that hold a callable; `get_config` would list them too, but it
    serializes every callable (and warns about lambdas) at each step.
    """
    names, values = ["learning_rate"], [learning_rate]
    for key, value in vars(optimizer).items():
        if not key.startswith("_") and callable(value) and not isinstance(value, type):
            names.append(key)
            values.append(value())
    return names, values


def account_for_step(owner, iterations, skipped, flags, names, num_hypers, raise_on_nonfinite):
    """Raises, or undoes the step count, when a gradient or a per-step hyperparameter was not finite.

    Args:
        owner: the optimizer's class name, for the message.
        iterations: the step counter (a `tf.Variable`); the Keras base adds 1 after this runs.
        skipped: the `skipped_steps` counter.
        flags: bool vector, one per gradient, then `num_hypers` for the hyperparameters.
        names: the variables' names, then the hyperparameters', in `flags` order.
        num_hypers: how many of the trailing `flags` belong to hyperparameters.
        raise_on_nonfinite: raise (`nonfinite="raise"` outside XLA) rather than skip.
    """
    num_grads = len(names) - num_hypers
    grad_flags, hyper_flags = flags[:num_grads], flags[num_grads:]
    hyper_names = names[num_grads:]

    def on_nonfinite():
        if raise_on_nonfinite:
            what = ("the learning rate" if hyper_names == ["learning_rate"]
                    else f"a per-step hyperparameter ({', '.join(hyper_names)})")
            # Plain data only (no string gather), so the step still compiles under XLA.
            hyper_check = tf.debugging.Assert(
                tf.reduce_all(hyper_flags),
                [
                    f"{owner}: {what} is NaN or Inf, not the gradient; no variable was updated. "
                    f"Finite flags for {hyper_names}:", hyper_flags,
                    "at step", iterations.read_value(), "gradients finite:", tf.reduce_all(grad_flags),
                    "Check the learning-rate schedule or callable, or pass nonfinite='skip' to skip such steps.",
                ],
                summarize=len(hyper_names),
            )
            with tf.control_dependencies([hyper_check]):
                tf.debugging.Assert(
                    tf.reduce_all(grad_flags),
                    [
                        f"{owner}: NaN or Inf in the gradients; no variable was updated. "
                        f"Finite flags for {names[:num_grads]}:",
                        grad_flags,
                        "at step",
                        iterations.read_value(),
                        "Pass nonfinite='skip' to skip such steps.",
                    ],
                    summarize=num_grads,
                )
        else:
            # The Keras base adds 1 after every apply; a skipped step takes it
            # back, so `iterations` counts applied steps.
            iterations.assign_sub(1)
            skipped.assign_add(1)

    tf.cond(tf.reduce_all(flags), lambda: None, on_nonfinite)
