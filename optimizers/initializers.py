"""`RowUniform`: an initializer whose value for a row depends on that row's id only.

Keras's random initializers draw the whole tensor from one stream, so the
value of row 7 depends on the table's shape and on how the table is cut.
A row-sharded table (`ShardedEmbedding`) builds only its own rows, and must
give each one the value it has in the unsharded table. `RowUniform` computes
element `(row, column)` from a counter-based hash of `(seed, row, column)`
(SplitMix64), so any subset of rows can be built alone, on any worker, and
equals the same rows of the full table bit for bit.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
# Elements hashed per block: bounds the uint64 temporaries to ~32 MB each.
_BLOCK = 1 << 22
# Elements assigned per `fill_rows` chunk (16 MB of float32).
_FILL = 1 << 22


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finalizer on a uint64 array (wrapping arithmetic)."""
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def uniform_rows(seed: int, row_ids, width: int, minval: float, maxval: float) -> np.ndarray:
    """float32 `[len(row_ids), width]`: uniform in `[minval, maxval)`, a function of (seed, row, column) only."""
    row_ids = np.asarray(row_ids, dtype=np.int64).reshape(-1)
    if row_ids.size and row_ids.min() < 0:
        raise ValueError(f"RowUniform: row ids must be >= 0, got {int(row_ids.min())}")
    key = _splitmix64(np.array([seed], dtype=np.uint64))[0]
    out = np.empty((row_ids.size, width), dtype=np.float32)
    columns = np.arange(width, dtype=np.uint64)
    step = max(1, _BLOCK // max(width, 1))
    scale = np.float64(maxval - minval) * 2.0**-24
    for start in range(0, row_ids.size, step):
        ids = row_ids[start:start + step].astype(np.uint64)
        bits = _splitmix64((ids[:, None] * np.uint64(width) + columns) ^ key) >> np.uint64(40)  # 24 bits
        out[start:start + step] = minval + bits.astype(np.float64) * scale
    return out


@keras.saving.register_keras_serializable(package="embedopt")
class RowUniform(keras.initializers.Initializer):
    """Uniform in `[minval, maxval)`, each row a pure function of (seed, row id).

    Use it for embedding tables that may be row-sharded: a table built whole
    and the same table built shard by shard (`ShardedEmbedding`) start with
    identical rows. Values have 24 random bits (float32's precision).

    Args:
        minval, maxval: the range, `minval < maxval`.
        seed: integer seed; the same seed gives the same rows.

    Example:
        >>> init = optimizers.RowUniform(-0.01, 0.01, seed=3)
        >>> table = init((1000, 8))          # rows 0..999
        >>> some = init.rows([7, 500], 8)    # equal to table[[7, 500]]
    """

    def __init__(self, minval=-0.05, maxval=0.05, seed=0):
        if not (np.isfinite(minval) and np.isfinite(maxval) and minval < maxval):
            raise ValueError(f"RowUniform: need finite minval < maxval, got minval={minval!r}, maxval={maxval!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"RowUniform: `seed` must be an integer >= 0, got {seed!r}")
        self.minval, self.maxval, self.seed = float(minval), float(maxval), int(seed)

    def rows(self, row_ids, width: int, dtype=None) -> tf.Tensor:
        """The rows `row_ids` of a table `width` columns wide."""
        values = uniform_rows(self.seed, row_ids, width, self.minval, self.maxval)
        return tf.cast(tf.constant(values), dtype or "float32")

    def __call__(self, shape, dtype=None):
        if len(shape) != 2:
            raise ValueError(f"RowUniform initializes 2-D tables (rows, width), got shape {tuple(shape)}")
        return self.rows(np.arange(int(shape[0])), int(shape[1]), dtype)

    def get_config(self):
        return {"minval": self.minval, "maxval": self.maxval, "seed": self.seed}


def can_fill_now() -> bool:
    """Whether a variable made now can be filled by `fill_rows` right away.

    Not inside a Keras `StatelessScope` (Keras traces a layer's `call` in one
    to build sublayers that have no `build`): there Keras defers creating
    variables until the scope ends, and runs their initializer then.
    """
    from keras.src.backend import in_stateless_scope  # no public accessor

    return not in_stateless_scope()


def shard_initializer(initializer: RowUniform, row_ids, rows: int):
    """A Keras initializer of the rows `row_ids` (those >= `rows` zero): `fill_rows`'s fallback."""
    def init(shape, dtype=None):
        row_ids_ = np.asarray(row_ids, dtype=np.int64)
        valid = row_ids_ < rows
        values = initializer.rows(np.where(valid, row_ids_, 0), int(shape[1]), dtype)
        return tf.where(valid[:, None], values, tf.zeros_like(values))

    return init


def fill_rows(variable, initializer: RowUniform, row_ids) -> None:
    """Assigns `initializer`'s row `row_ids[k]` to row `k` of `variable`, a chunk of rows at a time.

    A table created with zeros and filled this way peaks at its own size
    plus one chunk, where `initializer(shape)` would hold the values twice
    more (the NumPy array and its tensor) while the variable copies them.
    Works on a `MirroredVariable` inside its strategy's scope (every copy
    gets the same rows) as on a plain one.
    """
    if isinstance(variable, keras.Variable):
        variable = variable.value
    row_ids = np.asarray(row_ids, dtype=np.int64)
    width = int(np.prod(variable.shape[1:]))
    step = max(1, _FILL // max(width, 1))
    for start in range(0, row_ids.size, step):
        ids = row_ids[start:start + step]
        rows = initializer.rows(ids, width, variable.dtype)
        variable.scatter_update(tf.IndexedSlices(rows, tf.range(start, start + ids.size, dtype=tf.int64)))
