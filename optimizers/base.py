"""The shell shared by every embedopt optimizer.

`SparseOptimizer` is a `keras.optimizers.Optimizer` (TensorFlow backend) that
changes how a step is carried out, not what the rules are:

1. gradients are all-reduced across replicas (Keras's own all-reduce, which
   concatenates `tf.IndexedSlices` rather than densifying them);
2. each sparse gradient is deduplicated (repeated rows summed);
3. NaN/Inf anywhere, in a gradient or in this step's learning rate (or
   another hyperparameter given as a callable), raises (default) or skips
   the whole step (`optimizers.nonfinite`);
4. `clipnorm` / `clipvalue` / `global_clipnorm` act on the deduplicated
   slice values, after the all-reduce, so they see what a single replica on
   the global batch would see;
5. decoupled weight decay and the rule touch only the gathered rows.

Steps 2 and 5 run in the fused CPU kernels of `optimizers.kernels` where they
can (`optimizers.fast_path` decides per variable: CPU, no XLA, a supported
dtype; the non-lazy `Adam` keeps the TF ops): one deterministic dedup, then
one pass that gathers each touched row and its slots, applies the rule and
writes them back. A dense gradient of a variable of rank >= 1 takes the same
kernel with every row touched once, and the finite check of step 3 reads a
sparse gradient in one parallel pass (`EmbedoptAllFinite`). The TF-ops path
stays the fallback and the reference.

A row-sharded table (`optimizers.ShardedEmbedding`) is a plain variable
local to each replica, whose gradient already is this replica's summed
slice: it skips the all-reduce, its slots are local too, and it is updated
in the replica. The finite check and the norms that clipping needs are
all-reduced (a few scalars), so every replica takes the same decision and
the same scale as for the whole table.

Keras's base class clips per replica, before the all-reduce, and applies
weight decay to the whole table; both are switched off here and done as above.
A subclass lists its slots and implements `_rule`, which calls one pure
function from `optimizers.rules` for both the dense and the sparse path.
"""

from __future__ import annotations

import logging

import keras
import tensorflow as tf
from tensorflow.python.ops import control_flow_util  # no public API tells "tracing under XLA"

from optimizers import fast_path, hyperparams, nonfinite, precision, sparse
from optimizers.distributed import local_variable
from optimizers.rules import decoupled_weight_decay
from optimizers.sharded import SHARD_ATTRIBUTE, local_variables, shard_spec

NONFINITE_MODES = nonfinite.MODES


class SparseOptimizer(keras.optimizers.Optimizer):
    """Base class: Keras optimizer with a real `tf.IndexedSlices` path.

    Subclasses set `slot_names` (and `lazy`) and implement `_rule`.

    Args:
        learning_rate: float, `LearningRateSchedule` or zero-argument callable.
        nonfinite: what a step does when any gradient holds NaN or Inf, or
            when this step's learning rate (from a schedule, a callable or an
            assigned variable) or another callable hyperparameter is NaN or
            Inf: `"raise"` (default) fails with
            `tf.errors.InvalidArgumentError` naming the variables or the
            hyperparameter and the step; `"skip"` leaves every variable, slot
            and `iterations` as they were and counts the step in
            `skipped_steps`. Either way no variable is changed by that step.
        **kwargs: the Keras base arguments (`weight_decay`, `clipnorm`,
            `clipvalue`, `global_clipnorm`, `use_ema`, `loss_scale_factor`,
            `name`, ...). `gradient_accumulation_steps` is refused: it would
            need a dense, table-sized accumulator.
    """

    slot_names: tuple[str, ...] = ()
    # The fused kernel's rule (`optimizers.kernels.ops.HYPERS`), None for none; `_kernel_hypers` gives its scalars.
    kernel_rule: str | None = None
    # Lazy: a sparse step leaves the rows it does not touch, and their slots,
    # as they are. Not lazy (Adam): untouched rows also take the step a zero
    # gradient gives them, so the result equals the densified gradient's.
    lazy = True

    def __init__(self, learning_rate, nonfinite="raise", **kwargs):
        if isinstance(learning_rate, int) and not isinstance(learning_rate, bool):
            learning_rate = float(learning_rate)
        owner = type(self).__name__
        hyperparams.check_range(owner, "learning_rate", learning_rate, low=0.0)
        super().__init__(learning_rate=learning_rate, **kwargs)
        if nonfinite not in NONFINITE_MODES:
            raise ValueError(f"{owner}: `nonfinite` must be one of {NONFINITE_MODES}, got {nonfinite!r}")
        if self.gradient_accumulation_steps:
            raise ValueError(
                f"{owner}: `gradient_accumulation_steps` is not supported: accumulating sparse "
                "gradients needs a dense buffer as large as the table; use a larger batch instead"
            )
        for name in ("clipnorm", "clipvalue", "global_clipnorm"):
            value = getattr(self, name)
            if value is not None:
                hyperparams.check_range(owner, name, value, low=0.0, low_open=True)
        if self.weight_decay is not None:
            hyperparams.check_range(owner, "weight_decay", self.weight_decay, low=0.0)
        if self.use_ema:
            hyperparams.check_range(owner, "ema_momentum", self.ema_momentum, low=0.0, high=1.0)
        if self.loss_scale_factor is not None:
            hyperparams.check_range(owner, "loss_scale_factor", self.loss_scale_factor, low=0.0, low_open=True)
        self.nonfinite = nonfinite

    # -- variables ---------------------------------------------------------

    def build(self, var_list):
        if self.built:
            return
        if self.use_ema and any(shard_spec(v) for v in var_list):
            raise ValueError(f"{type(self).__name__}: `use_ema` is not supported with row-sharded tables "
                             "(the moving average would be a mirrored copy of every shard)")
        for var in var_list:
            precision.check_trainable_dtype(f"{type(self).__name__}: variable {var.name!r}", var.dtype)
        super().build(var_list)
        self._slots = {
            name: [self._make_slot(var, name) for var in var_list] for name in self.slot_names
        }
        self.skipped_steps = self.add_variable(
            shape=(), dtype="int64", initializer="zeros", aggregation="only_first_replica",
            name="skipped_steps",
        )

    def _make_slot(self, var, name):
        shape = self._slot_shape(var)
        spec = shard_spec(var)
        if spec is None and shape == tuple(var.shape):
            return self.add_variable_from_reference(var, name=name, initializer=self._slot_initializer(name))
        value = var.value if isinstance(var, keras.Variable) else var
        # A shard's slots are local to its replica, like the shard; others sit with their variable.
        place = (local_variables(value.device) if spec is not None
                 else self._distribution_strategy.extended.colocate_vars_with(value))
        prefix = getattr(var, "path", var.name).replace("/", "_").replace(":", "_")
        with place:
            slot = self.add_variable(shape=shape, initializer=self._slot_initializer(name), dtype=var.dtype,
                                     name=f"{prefix}_{name}")
        if spec is not None:
            setattr(slot.value, SHARD_ATTRIBUTE, spec)
        return slot

    def _slot_shape(self, var) -> tuple:
        """The shape of `var`'s slots: `var`'s own unless an optimizer keeps less (row-wise)."""
        return tuple(var.shape)

    def _slot_initializer(self, name):
        return "zeros"

    def get_slot(self, variable, name):
        """The slot `name` of `variable` (a Keras variable), for inspection."""
        return self._slots[name][self._get_variable_index(variable)]

    # -- one step ----------------------------------------------------------

    def _clip_gradients(self, grads):
        # Clipping happens in `_backend_update_step`, after all-reduce and dedup.
        return grads

    def _apply_weight_decay(self, variables):
        # Weight decay is applied row-wise inside `update_step`.
        return

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        variables = [v.value if isinstance(v, keras.Variable) else v for v in trainable_variables]
        sharded = [shard_spec(v) is not None for v in variables]
        mirrored = [(g, v) for g, v, s in zip(grads, variables, sharded) if not s]
        reduced = iter(self._all_reduce_sum_gradients(mirrored))
        # Shard gradients stay local: each replica holds the summed slice of its own rows.
        grads = [g if s else next(reduced)[0] for g, s in zip(grads, sharded)]
        grads = [fast_path.dedup(g, fast_path.use_kernels(v, g.values.dtype)) if isinstance(g, tf.IndexedSlices) else g
                 for g, v in zip(grads, variables)]
        flags = fast_path.finite_flags(grads, variables)
        if any(sharded):
            flags = self._agreed_flags(flags, sharded)
        hyper_names, hyper_values = nonfinite.per_step_hypers(self, learning_rate)
        flags = tf.concat([flags, nonfinite.finite_scalars(hyper_values)], axis=0)
        raise_on_nonfinite = self.nonfinite == "raise" and not self._compiling_with_xla()
        grads = self._clip(grads, sharded)
        for grad, var, is_shard in zip(grads, variables, sharded):
            if is_shard:
                tf.cond(tf.reduce_all(flags), lambda g=grad, v=var: self.update_step(g, v, learning_rate), lambda: None)
        tf.__internal__.distribute.interim.maybe_merge_call(
            self._distributed_guarded_update,
            self._distribution_strategy,
            [(g, v) for g, v, s in zip(grads, variables, sharded) if not s],
            learning_rate,
            flags,
            [v.name for v in variables] + hyper_names,
            len(hyper_names),
            raise_on_nonfinite,
        )

    @staticmethod
    def _agreed_flags(flags, sharded):
        """Finite flags all replicas agree on: a shard's flag is false when any replica's shard was not finite."""
        ctx = tf.distribute.get_replica_context()
        if ctx is None:
            return flags
        bad = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(tf.logical_not(flags), tf.float32))
        return tf.where(tf.constant(sharded), tf.equal(bad, 0.0), flags)

    @staticmethod
    def _squares(grads, sharded):
        """Each gradient's squared norm; a shard's summed over the replicas (one all-reduce)."""
        squares = [sparse.squared_norm(g) for g in grads]
        ctx = tf.distribute.get_replica_context()
        if ctx is None or not any(sharded):
            return squares
        picked = [sq for sq, s in zip(squares, sharded) if s]
        total = iter(tf.unstack(ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.stack(picked))))
        return [next(total) if s else sq for sq, s in zip(squares, sharded)]

    def _compiling_with_xla(self):
        """Whether this step is traced for XLA, where an assertion cannot raise.

        Compiled code drops `Assert`, so under `jit_compile=True` (Keras's
        default for `fit` on GPU) a non-finite step is skipped and counted,
        as with `nonfinite="skip"`, and a warning says so once.
        """
        xla = control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())
        if xla and self.nonfinite == "raise" and not getattr(self, "_warned_xla", False):
            self._warned_xla = True
            logging.getLogger(__name__).warning(
                "%s: under XLA (jit_compile) a NaN/Inf gradient cannot raise; such steps are skipped "
                "and counted in `skipped_steps` instead", type(self).__name__,
            )
        return xla

    def _clip(self, grads, sharded):
        if self.clipnorm:
            squares = self._squares(grads, sharded) if any(sharded) else [None] * len(grads)
            return [sparse.clip_by_norm(g, self.clipnorm, square=sq if s else None)
                    for g, sq, s in zip(grads, squares, sharded)]
        if self.global_clipnorm:
            squares = self._squares(grads, sharded) if any(sharded) else None
            return sparse.clip_by_global_norm(grads, self.global_clipnorm, squares=squares)
        if self.clipvalue:
            return [sparse.clip_by_value(g, self.clipvalue) for g in grads]
        return grads

    def _distributed_guarded_update(self, distribution, grads_and_vars, learning_rate, flags, names, num_hypers,
                                    raise_on_nonfinite):
        def guarded(var, grad, lr, flags):
            tf.cond(tf.reduce_all(flags), lambda: self.update_step(grad, var, lr), lambda: None)

        for grad, var in grads_and_vars:
            distribution.extended.update(var, guarded, args=(grad, learning_rate, flags), group=False)

        distribution.extended.update(
            self._iterations.value, self._account_for_step,
            args=(self.skipped_steps.value, flags, names, num_hypers, raise_on_nonfinite),
            group=False,
        )

    def _account_for_step(self, iterations, skipped, flags, names, num_hypers, raise_on_nonfinite):
        """`nonfinite.account_for_step` for this optimizer.

        This touches `iterations`, so the Keras base's `iterations += 1`,
        which comes after it in program order, cannot run before it: a
        raised error leaves the counter as it was.
        """
        nonfinite.account_for_step(type(self).__name__, iterations, skipped, flags, list(names), num_hypers,
                                   raise_on_nonfinite)

    def update_step(self, gradient, variable, learning_rate):
        """Applies the rule to `variable`: touched rows only for `tf.IndexedSlices`."""
        dtype = variable.dtype
        lr = tf.cast(learning_rate, dtype)
        index = self._get_variable_index(variable)
        # Inside `extended.update` `variable` is already this device's copy;
        # the slots must be too, or each gather reads the whole slot.
        slots = [local_variable(self._slots[name][index].value) for name in self.slot_names]
        decay = self._weight_decay_for(variable, dtype)
        if isinstance(gradient, tf.IndexedSlices):
            self._sparse_update(variable, slots, gradient, lr, decay)
        else:
            self._dense_update(variable, slots, tf.cast(gradient, dtype), lr, decay)

    def _weight_decay_for(self, variable, dtype):
        if self.weight_decay is None or not self._use_weight_decay(variable):
            return None
        return hyperparams.resolve(self.weight_decay, dtype)

    def _step(self, dtype):
        return tf.cast(self.iterations, dtype)

    def _apply_rule(self, var_value, slot_values, grad, lr, decay):
        if decay is not None:
            var_value = decoupled_weight_decay(var_value, lr, decay)
        return self._rule(var_value, slot_values, grad, lr)

    def _dense_update(self, variable, slots, grad, lr, decay):
        if self._kernel_serves_dense(variable, grad):
            # Every row touched once: the fused rule in one op instead of a dozen or more small TF ops per
            # variable (their dispatch costs more than the arithmetic on a model's small dense weights).
            self._kernel_apply(variable, slots, tf.range(tf.shape(variable, out_type=tf.int64)[0]), grad, lr, decay)
            return
        new_var, *new_slots = self._apply_rule(variable.read_value(), [s.read_value() for s in slots], grad, lr, decay)
        for slot, value in zip(slots, new_slots):
            slot.assign(value)
        variable.assign(new_var)

    def _sparse_update(self, variable, slots, grad, lr, decay):
        indices = grad.indices
        values = tf.cast(grad.values, variable.dtype)
        if self.lazy and self.kernel_rule and fast_path.use_kernels(variable):
            # The indices are distinct: `_backend_update_step` deduplicated them.
            self._kernel_apply(variable, slots, indices, values, lr, decay)
            return
        var_rows = tf.gather(variable, indices)
        slot_rows = [tf.gather(s, indices) for s in slots]
        new_var_rows, *new_slot_rows = self._apply_rule(var_rows, slot_rows, values, lr, decay)
        if not self.lazy:
            # The zero-gradient step on the whole table (a scalar zero that
            # broadcasts, not a dense gradient), then the touched rows get
            # their real update, computed above from the old rows.
            self._dense_update(variable, slots, tf.zeros([], variable.dtype), lr, decay)
        for slot, rows in zip(slots, new_slot_rows):
            slot.scatter_update(tf.IndexedSlices(rows, indices))
        variable.scatter_update(tf.IndexedSlices(new_var_rows, indices))

    def _kernel_apply(self, variable, slots, indices, values, lr, decay):
        """`kernel_rule` on the distinct rows `indices` of `variable` and its slots, in one fused op."""
        from optimizers.kernels import ops

        hypers = self._kernel_hypers(variable.dtype, lr) + ([] if decay is None else [decay])
        ops.sparse_apply(variable, slots, indices, values, self.kernel_rule, hypers, weight_decay=decay is not None,
                         assume_unique=True, **self._kernel_options())

    def _kernel_serves_dense(self, variable, grad) -> bool:
        """Whether a dense gradient of `variable` goes through the fused kernel (all rows, each once).

        Needs a rule, a variable of rank >= 1 and a gradient of its full shape (not the scalar zero of the
        non-lazy sweep), and the kernels serving the variable here; silent otherwise (a dense variable on a
        GPU is not a sparse path falling back).
        """
        return (self.kernel_rule is not None and variable.shape.rank is not None and variable.shape.rank >= 1
                and grad.shape == variable.shape and fast_path.fallback_reason(variable) is None)

    def _rule(self, var, slots, grad, lr):
        """Returns `(new_var, *new_slots)`; implemented by each optimizer."""
        raise NotImplementedError

    def _kernel_hypers(self, dtype, lr) -> list:
        """The scalars of `kernel_rule`, in `optimizers.kernels.ops.HYPERS` order, for this step."""
        raise NotImplementedError

    def _kernel_options(self) -> dict:
        return {}

    def apply_path(self, variable) -> str:
        """How a sparse step updates `variable` here: "fused kernel", or "TF ops: <why>"."""
        if not self.kernel_rule or not self.lazy:
            return f"TF ops: {type(self).__name__} has no fused kernel (it sweeps the whole table)"
        reason = fast_path.fallback_reason(variable)
        return fast_path.FUSED if reason is None else f"TF ops: {reason}"

    # -- config ------------------------------------------------------------

    def _hyper(self, name, dtype):
        return hyperparams.resolve(getattr(self, name), dtype)

    def get_config(self):
        config = super().get_config()
        config["nonfinite"] = self.nonfinite
        config["weight_decay"] = hyperparams.serialize(self.weight_decay)
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        for key, value in config.items():
            if key != "learning_rate":
                config[key] = hyperparams.deserialize(value)
        return super().from_config(config, custom_objects=custom_objects)
