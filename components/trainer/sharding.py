"""What split tables change in a run: per-replica facts, barriers, the export's whole tables.

Where each worker checkpoints, and resharding a checkpoint onto another plan
or worker count, are components/trainer/checkpoint_places.py and reshard.py.

Export: the SavedModel needs whole tables. The chief builds a mirrored twin
of the model, and every worker streams its shards into it in ~32 MB chunks
(`optimizers.sharded.gather_table`), so only the chief ever holds a whole
table, once. It first checks that the tables fit in the memory it has left;
all workers learn the outcome through one all-reduce, so none waits forever
for a chief that gave up.
"""

from __future__ import annotations


import numpy as np
import tensorflow as tf

from components.trainer.model import DLRM, build_model
from optimizers.sharded import gather_table, shard_spec

# The chief holds the whole tables once, plus the chunk in flight and SavedModel writing buffers.
EXPORT_HEADROOM = 1.25


def gather_arrays(strategy, fn) -> np.ndarray:
    """`fn()` run on every replica, gathered along axis 0 in replica order (every worker gets the array)."""
    @tf.function
    def run():
        return strategy.gather(strategy.run(fn), axis=0)

    return run().numpy()


def gather_per_replica(strategy, fn) -> list:
    """`gather_arrays` as a list."""
    return gather_arrays(strategy, fn).tolist()


def rows_per_replica(strategy, model: DLRM) -> list[int]:
    """Embedding rows each replica's table variables hold (a shard's padding included)."""
    local = sum(int(t.embeddings.shape[0]) for t in model.tables)
    return [int(v) for v in gather_per_replica(strategy, lambda: tf.constant([local], tf.int64))]


def barrier(strategy) -> None:
    """Returns once every worker has reached it (a one-number all-gather)."""
    gather_per_replica(strategy, lambda: tf.constant([0], tf.int64))


def weights_checksum(strategy, model: DLRM) -> list[float]:
    """Per-variable float64 sums; a sharded table's summed over its shards, so a row run's equal a mirrored one's."""
    sums = []
    for variable in model.trainable_variables:
        if shard_spec(variable) is None:
            sums.append(float(np.sum(variable.numpy(), dtype=np.float64)))
            continue
        local = variable.value

        def total(local=local):
            ctx = tf.distribute.get_replica_context()
            return ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.reduce_sum(tf.cast(local, tf.float64)))[None]

        sums.append(float(gather_per_replica(strategy, total)[0]))
    return sums


def available_memory_bytes() -> int:
    """Memory this process can still take: MemAvailable, capped by a cgroup (v2 or v1) limit when there is one."""
    available = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except OSError:
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file, encoding="ascii") as f:
                limit = f.read().strip()
            with open(usage_file, encoding="ascii") as f:
                usage = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:
            left = int(limit) - usage
            available = left if available is None else min(available, left)
        break
    return available if available is not None else 1 << 62


def table_bytes(model: DLRM) -> int:
    """Bytes of the model's whole tables (all rows, float32)."""
    return sum(int(t.input_dim) * int(t.output_dim) * 4 for t in model.tables)


def whole_table_model(strategy, model: DLRM, metadata, config, is_chief: bool, available: int | None = None):
    """On the chief: a mirrored-layout copy of a row- or table-wise `model`, tables gathered whole; None elsewhere.

    Every worker must call it (the gathers are collectives).

    Raises:
        ValueError: on every worker, when the whole tables do not fit in the
            chief's available memory (`available`, default: measured).
    """
    need = int(EXPORT_HEADROOM * table_bytes(model))
    if is_chief:
        available = available_memory_bytes() if available is None else available
        fits = need <= available
    else:
        available, fits = None, True
    agreed = gather_per_replica(strategy, lambda: tf.constant([1 if fits else 0], tf.int64))
    if not all(agreed):
        where = f"the chief has {available / 2**30:.2f} GiB available" if is_chief else "the chief has less"
        raise ValueError(
            f"export: the SavedModel needs the whole embedding tables ({need / 2**30:.2f} GiB: rows x (dim + 1) x 4 "
            f"bytes, plus {EXPORT_HEADROOM - 1:.0%}), and {where}. The trained shards are in the checkpoints under model_run_dir; export on a "
            "chief with more memory (serving holds 1x the tables, training with Adam 3x per shard)")
    twin = None
    if is_chief:
        # Every row of the twin comes from the shards: zeros to start with, not a second initialization.
        twin = build_model(metadata, config, table_sharding="mirrored", table_init="zeros")
        for target, source in zip(twin.dense_variables(), model.dense_variables()):
            target.assign(source.numpy())
    for i, table in enumerate(model.tables):
        target = twin.tables[i].embeddings if twin is not None else None

        def keep(ids, rows, target=target):
            if target is not None:
                target.value.scatter_update(tf.IndexedSlices(tf.constant(rows), tf.constant(ids)))

        if shard_spec(table.embeddings) is None:  # a data_parallel table: whole on every worker already
            if target is not None:
                target.assign(table.embeddings.numpy())
            continue
        gather_table(strategy, table.embeddings, keep)
    return twin
