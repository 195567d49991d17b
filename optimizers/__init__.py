"""Custom Keras optimizers with a real sparse path, `SparseEmbedding` and `ShardedEmbedding`.

A sparse step costs what the batch touches, not what the table holds: the
gradient of a `SparseEmbedding` lookup reaches the optimizer as
`tf.IndexedSlices`, duplicate rows are summed, and the update rule runs on the
touched rows only (lazy) or exactly (`Adam`). DESIGN.md section 3 fixes the
rules; `optimizers.rules` holds each one as a pure function.

`ShardedEmbedding` splits a table by rows over the workers of a
`MultiWorkerMirroredStrategy` job (`optimizers.sharded`), and
`TableWiseEmbedding` holds a whole table on one of them (`optimizers.table_wise`);
`RowUniform` initializes any subset of a table's rows alone.
`DynamicEmbedding` maps raw int64 keys to rows with admission and eviction
(`optimizers.dynamic`); `ShardedDynamicEmbedding` splits one over the
workers by key hash (`optimizers.dynamic_sharded`).

`optimizers.legacy` has `SGD`, `Momentum` and `DecayingSGD` for `tf_keras`.
"""

from __future__ import annotations

import keras

from optimizers.adagrad import Adagrad, RowWiseAdagrad
from optimizers.adam import Adam, AdamW, LazyAdam
from optimizers.base import SparseOptimizer
from optimizers.dynamic import DynamicEmbedding
from optimizers.dynamic_sharded import ShardedDynamicEmbedding
from optimizers.embedding import SparseEmbedding
from optimizers.ftrl import Ftrl
from optimizers.initializers import RowUniform
from optimizers.sharded import ShardedEmbedding
from optimizers.sgd import SGD, DecayingSGD, Momentum
from optimizers.table_wise import TableWiseEmbedding

OPTIMIZERS = {
    "sgd": SGD,
    "momentum": Momentum,
    "decaying_sgd": DecayingSGD,
    "adam": Adam,
    "lazy_adam": LazyAdam,
    "adamw": AdamW,
    "adagrad": Adagrad,
    "rowwise_adagrad": RowWiseAdagrad,
    "ftrl": Ftrl,
}


def get(identifier, **kwargs) -> SparseOptimizer:
    """Returns an optimizer from a name, a config dict or an instance.

    Args:
        identifier: one of `OPTIMIZERS`' names (`"lazy_adam"`, ...), a dict
            from `keras.optimizers.serialize(opt)` or `{"class_name": ...,
            "config": {...}}`, or a `SparseOptimizer` (returned as is).
        **kwargs: constructor arguments used with a name, e.g.
            `get("adam", learning_rate=1e-2)`.

    Raises:
        ValueError: for an unknown name, naming the valid ones.
    """
    if isinstance(identifier, SparseOptimizer):
        if kwargs:
            raise ValueError("optimizers.get: keyword arguments only apply to a name, not an optimizer instance")
        return identifier
    if isinstance(identifier, str):
        key = identifier.lower()
        if key not in OPTIMIZERS:
            raise ValueError(f"optimizers.get: unknown optimizer {identifier!r}; valid names: {', '.join(OPTIMIZERS)}")
        return OPTIMIZERS[key](**kwargs)
    if isinstance(identifier, dict):
        optimizer = keras.saving.deserialize_keras_object(identifier)
        if not isinstance(optimizer, SparseOptimizer):
            raise ValueError(f"optimizers.get: {identifier!r} does not describe an embedopt optimizer")
        return optimizer
    raise ValueError(f"optimizers.get: expected a name, a config dict or an optimizer, got {identifier!r}")


__all__ = [
    "OPTIMIZERS",
    "DynamicEmbedding",
    "SGD",
    "Adagrad",
    "Adam",
    "AdamW",
    "DecayingSGD",
    "Ftrl",
    "LazyAdam",
    "Momentum",
    "RowUniform",
    "RowWiseAdagrad",
    "ShardedDynamicEmbedding",
    "ShardedEmbedding",
    "SparseEmbedding",
    "SparseOptimizer",
    "TableWiseEmbedding",
    "get",
]
