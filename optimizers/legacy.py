"""The classic custom-optimizer API for `tf_keras` users.

`SGD`, `Momentum` and `DecayingSGD` subclass
`tf_keras.optimizers.legacy.Optimizer` (OptimizerV2) the way the classic
"write your own Keras optimizer" recipe does (`_set_hyper` in `__init__`,
`_create_slots`, `_resource_apply_dense`, `_resource_apply_sparse`,
`get_config`), but run the same pure rules as the Keras 3 classes
(`optimizers.rules`), and fix the recipe's two bugs:

- the sparse path is lazy: it gathers the touched rows of the variable and of
  every slot, runs the rule on them and scatters them back, so untouched rows
  of the momentum slot stay as they are (the recipe broadcast the gradient
  slice against the whole slot);
- the step counter is OptimizerV2's `iterations`, which advances once per
  `apply_gradients` call and is a variable, so it keeps counting under
  `tf.function` (the recipe counted in Python, once per variable).

NaN or Inf in this step's hyperparameters (a learning-rate schedule or
callable, a callable `momentum` or `decay_rate`, an assigned hyperparameter
variable) is caught before anything is written, as the Keras 3 classes do:
`nonfinite="raise"` (default) fails naming the optimizer, the step and the
hyperparameter; `"skip"` leaves variables, slots and `iterations` as they
were and counts the step in `skipped_steps`.

Duplicate indices: OptimizerV2 sends every `tf.IndexedSlices` gradient
through `_resource_apply_sparse_duplicate_indices`, which sums the values of
repeated indices (`tf.unique` + `unsorted_segment_sum`) before calling
`_resource_apply_sparse`; these classes rely on that and do not override it.

Classes are registered in tf_keras's registry as `embedopt>LegacySGD`,
`embedopt>LegacyMomentum` and `embedopt>LegacyDecayingSGD`. That registry is
separate from Keras 3's, where `embedopt>SGD` etc. name the Keras 3 classes;
distinct names keep a serialized config saying which API it belongs to.
"""

from __future__ import annotations

import math
import numbers

import tensorflow as tf
import tf_keras

from optimizers import fast_path, rules
from optimizers.nonfinite import MODES as NONFINITE_MODES, finite_scalars
from optimizers.precision import check_trainable_dtype

# OptimizerV2's numeric keyword arguments; it refuses negative ones but lets NaN and Inf through.
_NUMERIC_KWARGS = ("decay", "clipnorm", "clipvalue", "global_clipnorm")


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_finite(name, value):
    """Rejects a NaN or Inf constant: one step would write it into every variable."""
    if _is_number(value) and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number; got {name}={value}")


def _validate_learning_rate(value):
    """Rejects a negative or non-finite constant; schedules, callables and tensors pass."""
    if isinstance(value, bool) or (not _is_number(value) and not callable(value) and not tf.is_tensor(value)):
        raise ValueError(
            f"learning_rate must be a non-negative float, a LearningRateSchedule or a callable; got {value!r}"
        )
    _check_finite("learning_rate", value)
    if _is_number(value) and value < 0:
        raise ValueError(f"learning_rate must be >= 0; got learning_rate={value}")


class _RuleOptimizer(tf_keras.optimizers.legacy.Optimizer):
    """OptimizerV2 shell around one rule of `optimizers.rules`.

    Subclasses name their slots in `_rule_slots` and map the prepared
    coefficients to the rule call in `_run_rule(var, slots, grad, coefficients)`,
    which returns `(new_var, *new_slots)` for whole tensors or gathered rows alike.

    `decay` is OptimizerV2's time-inverse decay, applied by its `_decayed_lr`
    to every rule: `lr_t = lr / (1 + decay * iterations)`. Like every
    tf_keras optimizer it is a hyperparameter (`opt.decay`) and in the config.

    `nonfinite` ("raise" or "skip") says what a step does when a
    hyperparameter is NaN or Inf at that step (see the module docstring).
    """

    _HAS_AGGREGATE_GRAD = True
    _rule_slots: tuple[str, ...] = ()
    _kernel_rule: str | None = None  # the fused kernel's rule; `_kernel_hypers` gives its scalars

    def __init__(self, learning_rate, name, nonfinite="raise", **kwargs):
        learning_rate = kwargs.get("lr", learning_rate)
        _validate_learning_rate(learning_rate)
        for key in _NUMERIC_KWARGS:
            _check_finite(key, kwargs.get(key))
        if nonfinite not in NONFINITE_MODES:
            raise ValueError(f"nonfinite must be one of {NONFINITE_MODES}; got nonfinite={nonfinite!r}")
        super().__init__(name, **kwargs)
        self.nonfinite = nonfinite
        self._skipped_steps = None
        self._set_hyper("learning_rate", learning_rate)
        self._set_hyper("decay", self._initial_decay)

    @property
    def skipped_steps(self):
        """int64 variable: steps skipped because a hyperparameter was NaN or Inf (`nonfinite="skip"`)."""
        if self._skipped_steps is None:
            with self._distribution_strategy_scope():
                self._skipped_steps = self.add_weight("skipped_steps", shape=[], dtype=tf.int64, trainable=False,
                                                      initializer="zeros",
                                                      aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        return self._skipped_steps

    def _create_all_weights(self, var_list):
        super()._create_all_weights(var_list)
        _ = self.skipped_steps  # made with the other weights, outside any tf.function step

    def _distributed_apply(self, distribution, grads_and_vars, apply_state, name):
        """OptimizerV2's apply, guarded by a check of this step's hyperparameters (`lr_t`, momentum, ...).

        The check runs before any update (`raise`), every update is under a
        `tf.cond` on it (`skip`, and XLA, where an assertion cannot raise),
        and a skipped step takes back the `iterations += 1` the base adds.
        """
        names = sorted({key for coefficients in apply_state.values() for key in coefficients})
        flags = tf.stack([tf.reduce_all(finite_scalars(
            [c[key] for c in apply_state.values() if key in c])) for key in names])
        finite = tf.reduce_all(flags)
        for coefficients in apply_state.values():
            coefficients["finite"] = finite
        checks = []
        if self.nonfinite == "raise":
            shown = [n.replace("lr_t", "learning_rate") for n in names]
            checks.append(tf.debugging.Assert(finite, [
                f"{type(self).__name__}: the learning rate or another hyperparameter (not the gradient) is NaN or Inf; "
                f"no variable was updated. Finite flags for {shown}:", flags, "at step", self.iterations.read_value(),
                "Check the learning-rate schedule or callable, or pass nonfinite='skip' to skip such steps."],
                summarize=len(names)))
        with tf.control_dependencies(checks):
            applied = super()._distributed_apply(distribution, grads_and_vars, apply_state, name)
        with tf.control_dependencies([applied] if applied is not None and not tf.executing_eagerly() else []):
            return tf.cond(finite, lambda: tf.constant(True), self._take_back_step)

    def _take_back_step(self):
        self.iterations.assign_sub(1)
        self.skipped_steps.assign_add(1)
        return tf.constant(False)

    def _guarded(self, coefficients, apply):
        """`apply()` unless this step's hyperparameters were not finite."""
        finite = coefficients.get("finite")
        if finite is None:
            return apply()

        def run():
            with tf.control_dependencies([apply()]):
                return tf.constant(True)

        return tf.cond(finite, run, lambda: tf.constant(False))

    def _create_slots(self, var_list):
        for var in var_list:
            check_trainable_dtype(f"{type(self).__name__}: variable {var.name!r}", var.dtype)
        for var in var_list:
            for slot_name in self._rule_slots:
                self.add_slot(var, slot_name)

    def _coefficients(self, var, apply_state):
        var_device, var_dtype = var.device, var.dtype.base_dtype
        coefficients = (apply_state or {}).get((var_device, var_dtype))
        return coefficients or self._fallback_apply_state(var_device, var_dtype)

    def _resource_apply_dense(self, grad, var, apply_state=None):
        coefficients = self._coefficients(var, apply_state)
        return self._guarded(coefficients, lambda: self._apply_dense_rule(grad, var, coefficients))

    def _apply_dense_rule(self, grad, var, coefficients):
        slots = [self.get_slot(var, name) for name in self._rule_slots]
        new_var, *new_slots = self._run_rule(var, slots, grad, coefficients)
        updates = [var.assign(new_var, use_locking=self._use_locking, read_value=False)]
        updates += [
            slot.assign(value, use_locking=self._use_locking, read_value=False)
            for slot, value in zip(slots, new_slots)
        ]
        return tf.group(*updates)

    def _resource_apply_sparse_duplicate_indices(self, grad, handle, indices, **kwargs):
        """The fused kernel (sum duplicates, gather, rule, scatter in one pass) where it runs, else the base class's
        tf.unique + segment sum, then `_resource_apply_sparse`."""
        coefficients = self._coefficients(handle, kwargs.get("apply_state"))
        if self._kernel_rule is None or not fast_path.use_kernels(handle):
            return self._guarded(coefficients, lambda: super(_RuleOptimizer, self)._resource_apply_sparse_duplicate_indices(
                grad, handle, indices, **kwargs))
        from optimizers.kernels import ops

        slots = [self.get_slot(handle, name) for name in self._rule_slots]
        return self._guarded(coefficients, lambda: ops.sparse_apply(
            handle, slots, indices, tf.cast(grad, handle.dtype), self._kernel_rule, self._kernel_hypers(coefficients),
            use_locking=self._use_locking))

    def _kernel_hypers(self, coefficients) -> list:
        raise NotImplementedError

    def _resource_apply_sparse(self, grad, var, indices, apply_state=None):
        # `indices` are unique here: the base class summed duplicates first.
        coefficients = self._coefficients(var, apply_state)
        slots = [self.get_slot(var, name) for name in self._rule_slots]
        variables = [var, *slots]
        rows = [tf.gather(v, indices) for v in variables]
        new_rows = self._run_rule(rows[0], rows[1:], grad, coefficients)
        # Raw scatter ops: `_resource_scatter_update` would also read the whole table back.
        return tf.group(
            *[
                tf.raw_ops.ResourceScatterUpdate(resource=v.handle, indices=indices, updates=r)
                for v, r in zip(variables, new_rows)
            ]
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "learning_rate": self._serialize_hyperparameter("learning_rate"),
                "decay": self._initial_decay,
                "nonfinite": self.nonfinite,
            }
        )
        return config


@tf_keras.utils.register_keras_serializable(package="embedopt", name="LegacySGD")
class SGD(_RuleOptimizer):
    """Plain gradient descent on the OptimizerV2 API.

    Update rule: `var <- var - lr * g`.

    Slots: none; memory cost 0 beyond the variables.

    Sparse behaviour: for a `tf.IndexedSlices` gradient, duplicate indices are
    summed, then only the touched rows are gathered, updated and scattered back
    (O(rows touched * dim)); the result equals the dense step on the densified
    gradient.

    Args:
        learning_rate: float >= 0, a `tf_keras` `LearningRateSchedule` or a
            callable. `lr=` is accepted for the classic recipe's spelling.
        name: name of the optimizer's variables.
        **kwargs: `clipnorm`, `clipvalue`, `global_clipnorm`, `decay` as in
            `tf_keras.optimizers.legacy.Optimizer`.

    Example:
        >>> import tf_keras
        >>> from optimizers import legacy
        >>> model = tf_keras.Sequential([
        ...     tf_keras.layers.Embedding(1000, 8),
        ...     tf_keras.layers.GlobalAveragePooling1D(),
        ...     tf_keras.layers.Dense(1)])
        >>> model.compile(optimizer=legacy.SGD(learning_rate=0.1), loss="mse")
    """

    def __init__(self, learning_rate=0.01, name="SGD", **kwargs):
        super().__init__(learning_rate, name, **kwargs)

    _kernel_rule = "sgd"

    def _run_rule(self, var, slots, grad, coefficients):
        return rules.sgd(var, grad, coefficients["lr_t"])

    def _kernel_hypers(self, coefficients):
        return [coefficients["lr_t"]]


@tf_keras.utils.register_keras_serializable(package="embedopt", name="LegacyMomentum")
class Momentum(_RuleOptimizer):
    """Heavy-ball momentum, the seed's rule (not Keras's).

    Update rule: `m <- momentum * m + g`, `var <- var - lr * m`.

    Slots: `"momentum"`, one per variable, same shape and dtype; memory cost
    one extra copy of every variable (a table of rows x dim doubles).

    Sparse behaviour: lazy. Duplicate indices are summed, then only the touched
    rows of `m` and `var` are gathered, updated and scattered back; untouched
    rows of both keep their values (their momentum does not decay), so a sparse
    step differs from the dense step on the densified gradient.

    Args:
        learning_rate: float >= 0, a `tf_keras` `LearningRateSchedule` or a
            callable. `lr=` is accepted for the classic recipe's spelling.
        momentum: float in [0, 1) (or a callable returning one).
        name: name of the optimizer's variables.
        **kwargs: `clipnorm`, `clipvalue`, `global_clipnorm`, `decay` as in
            `tf_keras.optimizers.legacy.Optimizer`.

    Example:
        >>> import tf_keras
        >>> from optimizers import legacy
        >>> model = tf_keras.Sequential([
        ...     tf_keras.layers.Embedding(1000, 8),
        ...     tf_keras.layers.GlobalAveragePooling1D(),
        ...     tf_keras.layers.Dense(1)])
        >>> model.compile(optimizer=legacy.Momentum(0.05, momentum=0.9), loss="mse")
    """

    _rule_slots = ("momentum",)

    def __init__(self, learning_rate=0.01, momentum=0.9, name="Momentum", **kwargs):
        if _is_number(momentum) and not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1); got momentum={momentum}")
        super().__init__(learning_rate, name, **kwargs)
        self._set_hyper("momentum", momentum)

    def _prepare_local(self, var_device, var_dtype, apply_state):
        super()._prepare_local(var_device, var_dtype, apply_state)
        apply_state[(var_device, var_dtype)]["momentum"] = tf.identity(self._get_hyper("momentum", var_dtype))

    _kernel_rule = "momentum"

    def _run_rule(self, var, slots, grad, coefficients):
        return rules.momentum(var, slots[0], grad, coefficients["lr_t"], coefficients["momentum"])

    def _kernel_hypers(self, coefficients):
        return [coefficients["lr_t"], coefficients["momentum"]]

    def get_config(self):
        config = super().get_config()
        config["momentum"] = self._serialize_hyperparameter("momentum")
        return config


@tf_keras.utils.register_keras_serializable(package="embedopt", name="LegacyDecayingSGD")
class DecayingSGD(_RuleOptimizer):
    """SGD whose step size decays geometrically with the optimizer step.

    Update rule: `var <- var - lr * decay_rate**t * g`, where `t` is the
    number of optimizer steps applied before this one (`self.iterations`,
    0 on the first step). The counter advances once per `apply_gradients`
    call, however many variables it updates, and keeps counting inside
    `tf.function`.

    Slots: none; memory cost 0 beyond the variables (plus the scalar
    `iterations` every OptimizerV2 has).

    Sparse behaviour: duplicate indices are summed, then only the touched rows
    are gathered, updated and scattered back; the result equals the dense step
    on the densified gradient.

    Args:
        learning_rate: float >= 0, a `tf_keras` `LearningRateSchedule` or a
            callable. `lr=` is accepted for the classic recipe's spelling.
        decay_rate: float in (0, 1] (or a callable returning one).
        name: name of the optimizer's variables.
        **kwargs: `clipnorm`, `clipvalue`, `global_clipnorm`, `decay` as in
            `tf_keras.optimizers.legacy.Optimizer`.

    Example:
        >>> import tf_keras
        >>> from optimizers import legacy
        >>> model = tf_keras.Sequential([
        ...     tf_keras.layers.Embedding(1000, 8),
        ...     tf_keras.layers.GlobalAveragePooling1D(),
        ...     tf_keras.layers.Dense(1)])
        >>> model.compile(optimizer=legacy.DecayingSGD(0.1, decay_rate=0.99), loss="mse")
    """

    def __init__(self, learning_rate=0.01, decay_rate=0.99, name="DecayingSGD", **kwargs):
        if _is_number(decay_rate) and not 0.0 < decay_rate <= 1.0:
            raise ValueError(f"decay_rate must be in (0, 1]; got decay_rate={decay_rate}")
        super().__init__(learning_rate, name, **kwargs)
        self._set_hyper("decay_rate", decay_rate)

    def _prepare_local(self, var_device, var_dtype, apply_state):
        super()._prepare_local(var_device, var_dtype, apply_state)
        coefficients = apply_state[(var_device, var_dtype)]
        coefficients["decay_rate"] = tf.identity(self._get_hyper("decay_rate", var_dtype))
        coefficients["step"] = tf.cast(self.iterations, var_dtype)

    _kernel_rule = "sgd"

    def _run_rule(self, var, slots, grad, coefficients):
        return rules.decaying_sgd(
            var, grad, coefficients["lr_t"], coefficients["decay_rate"], coefficients["step"]
        )

    def _kernel_hypers(self, coefficients):
        return [coefficients["lr_t"] * tf.pow(coefficients["decay_rate"], coefficients["step"])]

    def get_config(self):
        config = super().get_config()
        config["decay_rate"] = self._serialize_hyperparameter("decay_rate")
        return config
