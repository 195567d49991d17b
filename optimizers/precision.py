"""Half-precision tables are refused: their updates round away.

A float16 value near 8.0 is a multiple of 2**-7, so an update of 1e-3 * g
with |g| < ~4 rounds back to the old value and the row never moves (bfloat16,
with 8 bits of mantissa, loses even more). Training such a table correctly
needs float32 math and slots with stochastic rounding on write (what fbgemm
does for FP16 weights); until embedopt has that on both the TF path and the
fused kernels, the table and its optimizer refuse half types and point to a
Keras mixed-precision policy, which keeps variables in float32 and computes
in float16.
"""

from __future__ import annotations

import tensorflow as tf

LOW_PRECISION = (tf.float16, tf.bfloat16)


def check_trainable_dtype(owner: str, dtype) -> None:
    """Raises `TypeError` naming `owner` when `dtype` is float16 or bfloat16.

    Args:
        owner: what holds the variable, e.g. "SparseEmbedding 'user_ids'" or "LazyAdam: variable 'table'".
        dtype: the variable's dtype (anything `tf.as_dtype` takes).
    """
    dtype = tf.as_dtype(dtype)
    if dtype in LOW_PRECISION:
        raise TypeError(
            f"{owner} is {dtype.name}: optimizer updates to a {dtype.name} table round away (a row at 8.0 never "
            f"moves at learning rate 1e-3), so embedopt refuses it. Keep variables in float32 and compute in "
            f"{dtype.name} with a mixed-precision policy: "
            f"keras.mixed_precision.set_global_policy('mixed_{dtype.name}') (or dtype='mixed_{dtype.name}' on the "
            f"layer)."
        )
