"""A ragged all-to-all between the replicas of a strategy: per-replica traffic proportional to the local batch.

`all_to_all(values, counts)`, called inside `strategy.run`, sends
`values[starts[d]:starts[d] + counts[d]]` to replica d (values sorted by
destination) and returns what every replica sent to this one, concatenated
in source order, with the count from each source. It is differentiable in
`values`: the backward pass runs the same exchange the other way.

It is built on `CollectiveAllToAllV2`, whose CPU implementation
(`tensorflow/core/common_runtime/all_to_all.cc`, registered as "AllToAll")
moves one equal-shaped chunk `t[i]` to rank i over the collective executor's
remote access (gRPC between workers, memcpy between local devices). Ragged
blocks therefore travel padded to `width`, the largest count any replica sends
to any other, which one scalar all-reduce (max) agrees on first. For ids
hashed over owners (`id % N`) the per-destination counts are about
`local / N`, so a replica sends `(N - 1) * width ~ local` rows, flat in N;
the worst case (every replica's ids on one owner) pads to `N x local`.

Why a bare `collective_ops.all_to_all_v2` "hangs" between two devices of one
process: V2 collectives are stateful ops missing from
`auto_control_deps.ASYNC_STATEFUL_OPS`, so a `tf.function` runs them in
program order; device 1's op waits for device 0's, which waits for device 1.
An `ordering_token` (a resource on the op's own device) orders collectives per
device instead, which is what TF's own `CollectiveReplicaLauncher` does and
what `AllToAll` below does. Eagerly, one Python thread issuing both replicas'
ops deadlocks the same way. See docs/all_to_all.md for the evidence.

Which exchange a job runs is `exchange_kind()`: "all_to_all" when this
TensorFlow has `CollectiveAllToAllV2`, else "all_gather" (today's
`optimizers.row_exchange`); `EMBEDOPT_EXCHANGE=all_gather` forces the
fallback. Both count what they send in a `ByteCounter`;
`optimizers.exchange_cost` predicts those counts without TensorFlow.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os

import tensorflow as tf
from tensorflow.python.framework import op_def_registry
from tensorflow.python.ops import collective_ops
from tensorflow.python.ops import resource_variable_ops

ALL_TO_ALL = "all_to_all"
ALL_GATHER = "all_gather"
EXCHANGES = (ALL_TO_ALL, ALL_GATHER)
EXCHANGE_ENV = "EMBEDOPT_EXCHANGE"
# Group keys far above those MultiWorkerMirroredStrategy's CollectiveKeys hand out (it counts up from 1).
GROUP_KEY_BASE = 0x2A2A0000
# The padded blocks' instance keys are `key * WIDTH_KEYS + width`: the collective runtime caches each instance's
# shape across tf.function calls (same step id), so one key must never see two widths. Trace-time keys stay
# below WIDTH_KEYS, so they never meet these.
WIDTH_KEYS = 1 << 20
DEFAULT_TIMEOUT_S = 300.0

_group_keys = itertools.count(GROUP_KEY_BASE)

Exchanged = collections.namedtuple("Exchanged", ["values", "counts", "bytes_sent"])
Exchanged.__doc__ = """What `all_to_all` returns.

values: what each source sent here, concatenated in source order.
counts: `[N]` int64, how many rows came from each source.
bytes_sent: int64 scalar, bytes this replica put on the wire to the
    other replicas for this exchange (the padded block, its counts and the
    width agreement), counted from tensor sizes.
"""


class ByteCounter:
    """Bytes this process put on the wire to other replicas, summed over steps, forward and backward.

    One int64 `tf.Variable` on `device`, made outside any strategy's variable
    creator and held by a plain Python object, so that neither Keras nor
    `tf.train.Checkpoint` tracks it: checkpoints stay as they were.
    """

    def __init__(self, device: str | None = None):
        with tf.init_scope(), tf.device(device):
            self.variable = resource_variable_ops.ResourceVariable(
                tf.constant(0, tf.int64), trainable=False, name="exchange_bytes_sent")

    def add(self, nbytes) -> None:
        """Adds `nbytes` (a scalar, any integer dtype); inside a `tf.function` it runs with the step."""
        self.variable.assign_add(tf.cast(nbytes, tf.int64))

    def value(self) -> int:
        return int(self.variable.numpy())


def exchange_kind(requested: str | None = None) -> str:
    """The exchange a job runs: `requested`, else `$EMBEDOPT_EXCHANGE`, else the best one this TF has.

    Raises:
        ValueError: `requested` (or the variable) is not one of `EXCHANGES`, or
            asks for "all_to_all" on a TensorFlow without `CollectiveAllToAllV2`.
    """
    requested = requested or os.environ.get(EXCHANGE_ENV) or "auto"
    available = op_def_registry.get("CollectiveAllToAllV2") is not None
    if requested == "auto":
        kind = ALL_TO_ALL if available else ALL_GATHER
    elif requested in EXCHANGES:
        if requested == ALL_TO_ALL and not available:
            raise ValueError(f"exchange {ALL_TO_ALL!r} needs CollectiveAllToAllV2, missing in TF {tf.__version__}; "
                             f"use {ALL_GATHER!r}")
        kind = requested
    else:
        raise ValueError(f"exchange must be 'auto' or one of {EXCHANGES}, got {requested!r}")
    logging.info("embedding exchange: %s (requested %s)", kind, requested)
    return kind


class AllToAll:
    """Ragged all-to-all among the replicas of `strategy` (MultiWorkerMirroredStrategy or MirroredStrategy).

    Build it outside `strategy.run` (it makes one ordering token per local
    replica device), in the same order on every worker (its collective group
    and instance keys are counters, like the strategy's own). Call it inside
    `strategy.run`.

    Args:
        strategy: the strategy whose replicas exchange; default the current one.
        timeout_s: every collective fails with `DeadlineExceededError` after
            this many seconds instead of hanging on a missing peer.
        counter: where every call adds the bytes it sends, forward and
            backward (default: a new `ByteCounter` on the first local device,
            `self.counter`).

    Example:
        >>> exchange = AllToAll(strategy)
        >>> def step(ids):
        ...     owners = ids % strategy.num_replicas_in_sync
        ...     order = tf.argsort(owners)
        ...     counts = tf.math.bincount(owners, minlength=n, maxlength=n, dtype=tf.int64)
        ...     return exchange(tf.gather(ids, order), counts).values
        >>> strategy.run(step, args=(ids,))
    """

    def __init__(self, strategy: tf.distribute.Strategy | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                 counter: ByteCounter | None = None):
        self.strategy = strategy or tf.distribute.get_strategy()
        self.num_replicas = self.strategy.num_replicas_in_sync
        self.devices = tuple(self.strategy.extended.worker_devices)
        self.timeout_s = float(timeout_s)
        self.group_key = next(_group_keys)
        self.counter = counter or ByteCounter(self.devices[0] if self.devices else None)
        # One counter per local replica: MirroredStrategy traces its replicas in threads, each drawing its keys.
        self._instance_keys = [itertools.count(1) for _ in self.devices]
        with tf.init_scope():
            self._tokens = []
            for device in self.devices:
                with tf.device(device):  # a plain variable: the strategy's creator would mirror it
                    self._tokens.append(resource_variable_ops.ResourceVariable(0.0, trainable=False))

    def __call__(self, values: tf.Tensor, counts: tf.Tensor) -> Exchanged:
        """Sends `counts[d]` consecutive rows of `values` (sorted by destination d) to replica d; see module doc."""
        ctx = tf.distribute.get_replica_context()
        if ctx is None or ctx.num_replicas_in_sync != self.num_replicas:
            raise RuntimeError(f"AllToAll over {self.num_replicas} replicas must be called inside `strategy.run` "
                               f"of its strategy (replica context: {ctx})")
        replica = tf.get_static_value(ctx.replica_id_in_sync_group)
        local = 0 if replica is None else int(replica) % len(self.devices)
        values = tf.convert_to_tensor(values)
        counts = tf.cast(counts, tf.int64)
        with tf.device(self.devices[local]):
            token = self._tokens[local].handle
            # Both directions travel padded to one width; the keys are drawn at trace time, the same on every worker.
            keys = [next(self._instance_keys[local]) for _ in range(4)]
            received_counts = self._collective(tf.reshape(counts, [-1, 1]), keys[0], token)[:, 0]
            width = collective_ops.all_reduce_v2(
                tf.reduce_max(tf.concat([counts, received_counts], 0))[None], self.num_replicas, self.group_key,
                keys[1], merge_op="Max", final_op="Id", timeout=self.timeout_s, ordering_token=token)[0]
            # An empty exchange still moves one (zero) row each way: no collective ever sees a zero-sized chunk.
            width = tf.maximum(width, 1)
            row_bytes = tf.reduce_prod(tf.shape(values, out_type=tf.int64)[1:]) * values.dtype.size
            exchanged = self._ragged(values, counts, received_counts, width, keys[2], keys[3], token, row_bytes)
        others = self.num_replicas - 1
        bytes_sent = others * (width * row_bytes + 8 + 8)  # the padded block, one count, the width
        self.counter.add(bytes_sent)
        return Exchanged(exchanged, received_counts, bytes_sent)

    def _collective(self, block, instance_key, token):
        return collective_ops.all_to_all_v2(block, self.num_replicas, self.group_key, instance_key,
                                            timeout=self.timeout_s, ordering_token=token)

    def _ragged(self, values, counts, received_counts, width, forward_key, backward_key, token, row_bytes):
        """The padded exchange of `values` and, as its gradient, the same exchange with counts swapped."""

        if forward_key >= (1 << 31) // WIDTH_KEYS:
            raise RuntimeError(f"AllToAll: instance keys exhausted after {forward_key} traces of its exchanges; "
                               "build a new AllToAll")
        checked = tf.debugging.assert_less(width, tf.constant(WIDTH_KEYS, width.dtype), message=(
            f"AllToAll: a block wider than {WIDTH_KEYS} rows (one worker asking one owner for that many ids)"))
        with tf.control_dependencies([checked]):
            width = tf.identity(width)

        def move(rows, send, receive, key):
            padded = pad_by_destination(rows, send, width, self.num_replicas)
            instance = tf.cast(key * WIDTH_KEYS + width, tf.int32)
            return unpad_by_source(self._collective(padded, instance, token), receive, width)

        if not values.dtype.is_floating:
            return move(values, counts, received_counts, forward_key)

        @tf.custom_gradient
        def exchange(rows):
            def grad(upstream):
                upstream = tf.convert_to_tensor(upstream)
                self.counter.add((self.num_replicas - 1) * width * row_bytes)
                return move(upstream, received_counts, counts, backward_key)

            return move(rows, counts, received_counts, forward_key), grad

        return exchange(values)


def pad_by_destination(values: tf.Tensor, counts: tf.Tensor, width: tf.Tensor, num_replicas: int) -> tf.Tensor:
    """`[num_replicas, width, ...]`: row i of destination d at `[d, i]`, zeros after `counts[d]`."""
    starts = tf.cumsum(counts, exclusive=True)
    destination = tf.repeat(tf.range(num_replicas, dtype=tf.int64), counts)
    slot = tf.range(tf.size(destination, out_type=tf.int64)) - tf.gather(starts, destination)
    shape = tf.concat([tf.constant([num_replicas], tf.int64), width[None],
                       tf.shape(values, out_type=tf.int64)[1:]], 0)
    return tf.scatter_nd(tf.stack([destination, slot], 1), values, shape)


def unpad_by_source(block: tf.Tensor, counts: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """The first `counts[s]` rows of each `block[s]`, concatenated in source order."""
    keep = tf.range(width)[None, :] < counts[:, None]
    return tf.boolean_mask(block, keep)


def lookup_rows(exchange: AllToAll, shard: tf.Variable, ids: tf.Tensor, num_shards: int,
                owner: int | None = None) -> tuple[tf.Tensor, tf.Tensor]:
    """`(rows of ids, bytes sent)` from a table row-sharded by `id % num_shards` (local row `id // num_shards`).

    With an `owner`, the table is whole on replica `owner` (local row = id) and
    every id goes there (a table_wise table).

    Ids go to their owners and rows come back, each replica moving only what
    its own batch asks for (its distinct ids); the gradient flows back along
    the same path, so each owner's shard gets `tf.IndexedSlices` of the rows
    its peers looked up (duplicates are summed by the optimizers). A drop-in
    for `optimizers.row_exchange.exchange_rows` where `exchange_kind()` is
    "all_to_all".
    """
    flat = tf.reshape(tf.cast(ids, tf.int64), [-1])
    distinct, position = tf.unique(flat, out_idx=tf.int64)
    owners = distinct % num_shards if owner is None else tf.fill(tf.shape(distinct), tf.constant(owner, tf.int64))
    order = tf.cast(tf.argsort(owners, stable=True), tf.int64)
    counts = tf.math.bincount(owners, minlength=num_shards, maxlength=num_shards, dtype=tf.int64)
    asked = exchange(tf.gather(distinct, order), counts)
    local = asked.values // num_shards if owner is None else asked.values
    served = exchange(tf.gather(shard, local), asked.counts)
    # served.values is in the order the ids were sent: undo the sort, then expand to the batch.
    rows = tf.gather(tf.scatter_nd(order[:, None], served.values, tf.shape(served.values, out_type=tf.int64)),
                     position)
    rows = tf.reshape(rows, tf.concat([tf.shape(ids), tf.shape(shard)[1:]], 0))
    return rows, asked.bytes_sent + served.bytes_sent
