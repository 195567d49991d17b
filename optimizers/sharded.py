"""`ShardedEmbedding`: a table row-sharded across the replicas of a multi-worker job.

Under `MultiWorkerMirroredStrategy` with N workers (one replica each, one
GPU per pod), replica r holds only the rows with `id % N == r`, at local row
`id // N`, plus those rows' optimizer slots. Its variable has
`ceil(rows / N)` rows on every replica (the last rows of some shards are
padding, zero and never looked up), so collectives see equal shapes.

A lookup and its gradient exchange the batch's distinct ids and rows with
TF collectives, never O(table), in one of two ways (`exchange`): an
all-to-all that sends each owner only the ids this replica asks of it,
O(local batch x dim) per replica (`optimizers/all_to_all.py`), or the
all-gather fallback, O(global batch x dim) (`optimizers/row_exchange.py`).
The optimizers apply the
gradient, `tf.IndexedSlices` on the local shard, directly, with no
all-reduce (see `SparseOptimizer`).

Every row starts from `RowUniform`'s value for its global id, so a sharded
and an unsharded table built with the same seed start equal, and no worker
ever builds the whole table.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.ops import resource_variable_ops  # a variable that skips the strategy's creator

from optimizers.all_to_all import ALL_TO_ALL, EXCHANGES, AllToAll, ByteCounter, exchange_kind, lookup_rows
from optimizers.embedding import COMBINERS, check_ids, pooled_lookup_tf
from optimizers.row_exchange import exchange_block, exchange_rows
from optimizers.initializers import RowUniform, can_fill_now, fill_rows, shard_initializer

SHARD_ATTRIBUTE = "_embedopt_shard"


@dataclasses.dataclass(frozen=True)
class ShardSpec:
    """Which rows a local shard variable holds: global id = `shard_index + num_shards * local row`.

    With an `owner` (a table_wise table, `optimizers/table_wise.py`) worker
    `owner` holds every row at local row = id, and the others hold none.
    """

    num_shards: int
    shard_index: int
    rows: int  # rows of the whole table
    owner: int | None = None

    @property
    def local_rows(self) -> int:
        if self.owner is not None:
            return self.rows if self.shard_index == self.owner else 0
        return math.ceil(self.rows / self.num_shards)

    def global_ids(self) -> np.ndarray:
        """Global id of each local row (padding rows get ids >= `rows`)."""
        if self.owner is not None:
            return np.arange(self.local_rows, dtype=np.int64)
        return self.shard_index + self.num_shards * np.arange(self.local_rows, dtype=np.int64)


def shard_spec(variable) -> ShardSpec | None:
    """The `ShardSpec` of a shard variable (Keras or tf.Variable), else None."""
    if isinstance(variable, keras.Variable):
        variable = variable.value
    return getattr(variable, SHARD_ATTRIBUTE, None)


def replica_layout(strategy: tf.distribute.Strategy | None = None) -> tuple[int, int]:
    """`(num_replicas, this process's replica id)` for a row-sharded table under `strategy`.

    Raises:
        ValueError: when this process runs more than one replica (e.g.
            `MirroredStrategy` over several GPUs): a shard is a plain local
            variable, one per process.
    """
    strategy = strategy or tf.distribute.get_strategy()
    if not tf.distribute.has_strategy():
        return 1, 0
    devices = strategy.extended.worker_devices
    if len(devices) > 1:
        raise ValueError(
            f"row-sharded tables need one replica per process, but this process runs {len(devices)} "
            f"({', '.join(devices)}) under {type(strategy).__name__}. Use one worker per device instead: "
            "`embedopt train --local-workers N`, or a multi-worker job (one GPU per pod)")
    n = strategy.num_replicas_in_sync
    if n == 1:
        return 1, 0
    @tf.function  # eagerly, MultiWorkerMirroredStrategy.run warns of its overhead
    def replica_id():
        return strategy.run(lambda: tf.identity(tf.distribute.get_replica_context().replica_id_in_sync_group))

    return n, int(strategy.experimental_local_results(replica_id())[0])


@contextlib.contextmanager
def local_variables(device: str | None = None):
    """Variables created inside are plain, per-process `tf.Variable`s, even inside `strategy.scope()`.

    A strategy's variable creator would make them mirrored (and
    MultiWorkerMirroredStrategy would broadcast worker 0's initial value
    over every worker's shard). This creator runs before the strategy's and
    builds the variable itself.
    """
    accepted = set(inspect.signature(resource_variable_ops.ResourceVariable.__init__).parameters) - {"self"}

    def creator(next_creator, **kwargs):
        del next_creator
        kwargs.pop("distribute_strategy", None)
        kwargs = {k: v for k, v in kwargs.items() if k in accepted}
        kwargs["synchronization"] = tf.VariableSynchronization.NONE
        kwargs["aggregation"] = tf.VariableAggregation.NONE
        with tf.device(device) if device else contextlib.nullcontext():
            return resource_variable_ops.ResourceVariable(**kwargs)

    with tf.variable_creator_scope(creator):
        yield


def _worker_device(strategy) -> str | None:
    if not tf.distribute.has_strategy():
        return None
    devices = strategy.extended.worker_devices
    return devices[0] if devices else None


@keras.saving.register_keras_serializable(package="embedopt")
class ShardedEmbedding(keras.layers.Layer):
    """An embedding table split by rows over the replicas of a multi-worker job.

    A separate layer rather than an option of `SparseEmbedding`, because its
    contract differs: its variable is a plain per-process variable holding
    `ceil(input_dim / N)` rows (not a mirrored one), its call runs
    collectives and so must run inside `strategy.run`, each worker
    checkpoints its own shard, and serving needs the table gathered whole
    (`gather_table`). Outside a multi-replica strategy (N = 1) it is a
    `SparseEmbedding` with `RowUniform` rows.

    Replica r holds the rows with `id % N == r` (hot ids, which are small in
    a frequency-ordered vocabulary, spread over all replicas). The lookup
    and its gradient exchange the batch's distinct ids and rows with TF
    collectives; `SparseOptimizer`s apply the gradient to the local shard
    and its slots only. Two exchanges: "all_to_all" sends each owner only
    the distinct ids this replica asks of it and gets their rows back (per
    replica traffic bounded by its local batch, `optimizers/all_to_all.py`);
    "all_gather" all-gathers every replica's ids and all-reduces the block
    of all their rows (traffic grows with the global batch,
    `optimizers/row_exchange.py`). Both give the same rows and gradients;
    `exchange_kind` says which one runs, `bytes_sent` what it has sent.

    Build it inside `strategy.scope()` of a `MultiWorkerMirroredStrategy`
    (one replica per process: `MirroredStrategy` over several devices is
    refused with an error that says to use workers).

    With a `combiner` it pools bags of ids as `SparseEmbedding` does: the
    input is a `[batch, ids]` matrix or a `tf.RaggedTensor` `[batch, (ids)]`
    (bag sizes may differ between replicas), optionally with per-id
    `weights`, and the output `[batch, output_dim]`; each bag's rows come
    through the exchange, then pool on the replica that asked.

    Args:
        input_dim: rows of the whole table, > 0.
        output_dim: embedding width, > 0.
        embeddings_initializer: a `RowUniform` (default `RowUniform()`):
            each replica builds its own rows, equal to the unsharded table's.
        validate_ids: check ids against `[0, input_dim)` (default True).
        combiner: None (one row per id), `"sum"`, `"mean"` or `"sqrtn"`.
        exchange: `"auto"` (default: `optimizers.all_to_all.exchange_kind()`,
            all_to_all where this TensorFlow has it, `EMBEDOPT_EXCHANGE`
            overriding), `"all_to_all"` or `"all_gather"`. Every worker must
            resolve the same one (same TensorFlow, same variable).

    Attributes:
        exchange_kind: after `build`, the exchange the lookups use when
            N > 1 ("all_to_all" or "all_gather"), for a job to report.
        bytes_sent: after `build`, bytes this worker has sent through the
            exchange, forward and backward, since the build (0 when N = 1).

    Example:
        >>> strategy = tf.distribute.MultiWorkerMirroredStrategy()
        >>> with strategy.scope():
        ...     table = optimizers.ShardedEmbedding(10_000_000, 32)
        ...     table.build()   # each of N workers holds 10M / N rows
        >>> strategy.run(lambda ids: table(ids), args=(ids,))
    """

    def __init__(self, input_dim, output_dim, embeddings_initializer=None, validate_ids=True, combiner=None,
                 exchange="auto", **kwargs):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        for name, value in (("input_dim", input_dim), ("output_dim", output_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"ShardedEmbedding: `{name}` must be a positive integer, got {value!r}")
        initializer = RowUniform() if embeddings_initializer is None else keras.initializers.get(embeddings_initializer)
        if not isinstance(initializer, RowUniform):
            raise ValueError(
                "ShardedEmbedding: `embeddings_initializer` must be an `optimizers.RowUniform`, whose rows each "
                f"worker can build alone; got {type(initializer).__name__}")
        self.input_dim, self.output_dim = input_dim, output_dim
        self.embeddings_initializer = initializer
        self.validate_ids = bool(validate_ids)
        if combiner is not None and combiner not in COMBINERS:
            raise ValueError(f"ShardedEmbedding: `combiner` must be None or one of {COMBINERS}, got {combiner!r}")
        self.combiner = combiner
        if exchange != "auto" and exchange not in EXCHANGES:
            raise ValueError(f"ShardedEmbedding: `exchange` must be 'auto' or one of {EXCHANGES}, got {exchange!r}")
        self.exchange = exchange
        self.exchange_kind: str | None = None
        self.spec: ShardSpec | None = None
        # Plain Python holders: neither Keras nor tf.train.Checkpoint tracks their variables.
        self._counter: ByteCounter | None = None
        self._all_to_all: AllToAll | None = None

    def build(self, input_shape=None):
        strategy = tf.distribute.get_strategy()
        self.spec = self._make_spec(*replica_layout(strategy))
        global_ids = self.spec.global_ids()
        fill = can_fill_now()
        with local_variables(_worker_device(strategy)):
            self.embeddings = self.add_weight(
                shape=(self.spec.local_rows, self.output_dim), name="embeddings", autocast=False,
                initializer="zeros" if fill else shard_initializer(self.embeddings_initializer, global_ids,
                                                                  self.input_dim))
        if fill:
            # Padding rows (ids past the table) stay zero; the others get their unsharded value, a chunk at a time.
            with tf.init_scope():
                fill_rows(self.embeddings, self.embeddings_initializer, global_ids[global_ids < self.input_dim])
        setattr(self.embeddings.value, SHARD_ATTRIBUTE, self.spec)
        self.exchange_kind = exchange_kind(None if self.exchange == "auto" else self.exchange)
        self._counter = ByteCounter(_worker_device(strategy))
        if self.spec.num_shards > 1 and self.exchange_kind == ALL_TO_ALL:
            # Built here, in layer build order, so its collective keys agree on every worker.
            self._all_to_all = AllToAll(strategy, counter=self._counter)
        self.built = True

    def _make_spec(self, num_shards: int, shard_index: int) -> ShardSpec:
        return ShardSpec(num_shards, shard_index, self.input_dim)

    @property
    def bytes_sent(self) -> int:
        """Bytes this worker has sent through the exchange since the build, forward and backward."""
        return 0 if self._counter is None else self._counter.value()

    def _lookup_rows(self, table, ids):
        """Rows of `ids` (any shape) from the sharded table, through the exchange."""
        if self._all_to_all is not None:
            return lookup_rows(self._all_to_all, table, ids, self.spec.num_shards, self.spec.owner)[0]
        return exchange_rows(table, ids, self.spec.num_shards, self.spec.shard_index, counter=self._counter,
                             owner=self.spec.owner)

    def call(self, ids, weights=None):
        if not ids.dtype.is_integer:
            raise TypeError(f"ShardedEmbedding {self.name!r}: ids must be integers, got {ids.dtype.name}")
        if weights is not None and self.combiner is None:
            raise ValueError(f"ShardedEmbedding {self.name!r}: `weights` need a `combiner`")
        ids = tf.cast(ids, tf.int64)
        if self.combiner is not None:
            return tf.cast(self._pooled(ids, weights), self.compute_dtype)
        if self.validate_ids:
            ids = check_ids(f"ShardedEmbedding {self.name!r}", ids, self.input_dim)
        table = self.embeddings.value
        if self.spec.num_shards == 1:
            rows = tf.gather(table, ids)
        else:
            rows = self._lookup_rows(table, ids)
        return tf.cast(rows, self.compute_dtype)

    def _pooled(self, ids, weights):
        """Bags of `ids` pooled by the combiner: the exchanged block is the table the local pooling reads."""
        if not isinstance(ids, tf.RaggedTensor):
            ids = tf.RaggedTensor.from_tensor(ids)
            weights = None if weights is None else tf.RaggedTensor.from_tensor(weights)
        table = self.embeddings.value
        if weights is not None:
            weights = weights.with_values(tf.cast(weights.values, table.dtype))
        values = ids.values
        if self.validate_ids:
            values = check_ids(f"ShardedEmbedding {self.name!r}", values, self.input_dim)
        if self.spec.num_shards == 1:
            return pooled_lookup_tf(table, ids.with_values(values), weights, self.combiner)
        if self._all_to_all is not None:
            # One row per id, in id order: pool them as a table indexed by position.
            rows = lookup_rows(self._all_to_all, table, values, self.spec.num_shards, self.spec.owner)[0]
            positions = tf.range(tf.size(values, out_type=tf.int64))
            return pooled_lookup_tf(rows, ids.with_values(positions), weights, self.combiner)
        block, positions = exchange_block(table, values, self.spec.num_shards, self.spec.shard_index,
                                          equal_counts=False, counter=self._counter, owner=self.spec.owner)
        return pooled_lookup_tf(block, ids.with_values(positions), weights, self.combiner)

    def compute_output_shape(self, input_shape):
        if self.combiner is not None:
            return (input_shape[0], self.output_dim)
        return tuple(input_shape) + (self.output_dim,)

    def get_config(self):
        config = super().get_config()
        config.update(input_dim=self.input_dim, output_dim=self.output_dim,
                      embeddings_initializer=keras.initializers.serialize(self.embeddings_initializer),
                      validate_ids=self.validate_ids, combiner=self.combiner, exchange=self.exchange)
        return config


def gather_table(strategy: tf.distribute.Strategy, shard: tf.Variable, on_rows, chunk_bytes: int = 1 << 25) -> None:
    """Streams a sharded table's rows to `on_rows(global_ids, rows)` on every worker, a chunk at a time.

    Every worker must call it (it runs all-gathers); each chunk holds about
    `chunk_bytes` of rows from all shards together, so no worker holds more
    than that at once beyond what `on_rows` keeps. Padding rows are dropped.
    Works for a shard's slots too (any variable with the shard's layout).
    """
    spec = shard_spec(shard)
    if spec is None:
        raise ValueError(f"gather_table: {getattr(shard, 'name', shard)!r} is not a shard variable")
    value = shard.value if isinstance(shard, keras.Variable) else shard
    width = int(np.prod(value.shape[1:]))  # 1 for a row-wise slot
    chunk = max(1, chunk_bytes // (value.dtype.size * width * spec.num_shards))
    if spec.owner is not None:
        _gather_owned(strategy, value, spec, chunk * spec.num_shards, on_rows)
        return

    @tf.function
    def gathered(start):
        def replica():
            ctx = tf.distribute.get_replica_context()
            return ctx.all_gather(value[start:start + chunk], axis=0)

        return strategy.experimental_local_results(strategy.run(replica))[0]

    for start in range(0, spec.local_rows, chunk):
        rows = gathered(tf.constant(start, tf.int64)).numpy()
        size = rows.shape[0] // spec.num_shards
        local = start + np.arange(size, dtype=np.int64)
        ids = (np.arange(spec.num_shards, dtype=np.int64)[:, None] + spec.num_shards * local[None, :]).reshape(-1)
        keep = ids < spec.rows
        on_rows(ids[keep], rows[keep])


def _gather_owned(strategy, value, spec: ShardSpec, chunk: int, on_rows) -> None:
    """`gather_table` of a table_wise table: the owner's rows, a chunk at a time (the others send none)."""
    @tf.function
    def gathered(start):
        def replica():
            return tf.distribute.get_replica_context().all_gather(value[start:start + chunk], axis=0)

        return strategy.experimental_local_results(strategy.run(replica))[0]

    for start in range(0, spec.rows, chunk):
        rows = gathered(tf.constant(start, tf.int64)).numpy()
        on_rows(start + np.arange(rows.shape[0], dtype=np.int64), rows)
