"""Which path a sparse step takes: the fused CPU kernels (`optimizers.kernels`) or TensorFlow ops.

The kernels run where they can: the library loads (it is built on first
use), the variable lives on a CPU, the step is not compiled with XLA (a
custom op has no XLA kernel) and its dtype is one they support. Everywhere
else the TF-ops path runs, which stays the reference the kernels are tested
against; each reason for falling back is logged once, in one line.

`disabled()` forces the TF-ops path inside a `with` block (tests and
benchmarks compare the two paths in one process); `EMBEDOPT_KERNELS=off`
forces it for the whole process.
"""

from __future__ import annotations

import contextlib
import logging
import threading

import tensorflow as tf
from tensorflow.python.ops import control_flow_util  # no public API tells "tracing under XLA"

from optimizers import kernels

KERNEL_DTYPES = (tf.float32, tf.float64, tf.float16, tf.bfloat16)
KERNEL_INDEX_DTYPES = (tf.int32, tf.int64)
FUSED = "fused kernel"

_local = threading.local()
_warned: set[str] = set()
_warn_lock = threading.Lock()


@contextlib.contextmanager
def disabled():
    """Within the block, every step traced or run takes the TF-ops path."""
    previous = getattr(_local, "disabled", False)
    _local.disabled = True
    try:
        yield
    finally:
        _local.disabled = previous


def _warn_once(reason: str) -> None:
    with _warn_lock:
        if reason in _warned:
            return
        _warned.add(reason)
    logging.getLogger(__name__).warning("embedopt: TF-ops sparse path instead of the fused kernel: %s", reason)


def fallback_reason(variable, dtype=None) -> str | None:
    """None when the fused kernels serve `variable` here, else why not (one line)."""
    if getattr(_local, "disabled", False):
        return "disabled for this block (optimizers.fast_path.disabled)"
    if kernels.load() is None:
        return kernels.status()[1]
    device = getattr(variable, "device", "") or ""
    if device and "CPU" not in device.upper():
        return f"{variable.name} is on {device}: the kernels run on CPUs only"
    if control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()):
        return "the step is compiled with XLA (jit_compile), which has no kernel for a custom op"
    dtype = tf.as_dtype(dtype or variable.dtype)
    if dtype not in KERNEL_DTYPES:
        return f"{variable.name} is {dtype.name}; the kernels take {', '.join(d.name for d in KERNEL_DTYPES)}"
    return None


def use_kernels(variable, dtype=None) -> bool:
    """Whether the fused kernels serve `variable` in the step being traced; logs the reason once if not."""
    reason = fallback_reason(variable, dtype)
    # An unavailable library has said why once already (optimizers.kernels.load): one line, not two.
    if reason is not None and not getattr(_local, "disabled", False) and kernels.load() is not None:
        _warn_once(reason)
    return reason is None


def finite_flags(grads, variables) -> tf.Tensor:
    """A bool vector: whether each gradient is free of NaN and Inf (`sparse.finite_flags`).

    A sparse gradient of a variable the kernels serve is checked by
    `EmbedoptAllFinite` (one parallel pass over its values, nothing written);
    every other by `tf.reduce_all(tf.math.is_finite(...))`.
    """
    from optimizers import sparse

    flags = []
    for grad, variable in zip(grads, variables):
        if (isinstance(grad, tf.IndexedSlices) and grad.values.dtype in KERNEL_DTYPES
                and fallback_reason(variable, grad.values.dtype) is None):
            from optimizers.kernels import ops

            flags.append(ops.all_finite(grad.values))
        else:
            flags.append(sparse.all_finite(grad.values if isinstance(grad, tf.IndexedSlices) else grad))
    return tf.stack(flags)


def dedup(grad: tf.IndexedSlices, use_kernel: bool) -> tf.IndexedSlices:
    """`grad` with repeated indices summed: the kernel's (ids ascending, deterministic) or tf.unique + segment sum."""
    from optimizers import sparse

    if not use_kernel or grad.indices.dtype not in KERNEL_INDEX_DTYPES:
        return sparse.dedup_indexed_slices(grad)
    from optimizers.kernels import ops

    indices, values = ops.dedup(grad.indices, grad.values)
    return tf.IndexedSlices(values, indices, grad.dense_shape)
