"""What split tables change in a run: checkpoint places, per-replica facts, the export's whole table.

Checkpoints (under `model_run_dir/checkpoints/`):
  mirrored   ckpt-*                         the chief's (every worker restores it); every table data_parallel
  row        row-shards-of-N/shard-R/ckpt-*  worker R's, with its own shards (every worker writes one); any
                                            table row_wise or table_wise (components/trainer/planner.py)

A row run resumes from the newest step that all shard folders of one worker
count hold, so a kill between two workers' saves cannot mix steps. When
those were written by another number of workers, M, each worker first
reshards: it writes its own shard for this run's N workers from the M old
ones (`reshard`), then restores it as usual; only row_wise tables reshard
(a table_wise table's owner changes with N: `planner.check_restart` refuses
that before). A checkpoint of the other placement is refused with an error
naming both.

Export: the SavedModel needs whole tables. The chief builds a mirrored twin
of the model, and every worker streams its shards into it in ~32 MB chunks
(`optimizers.sharded.gather_table`), so only the chief ever holds a whole
table, once. It first checks that the tables fit in the memory it has left;
all workers learn the outcome through one all-reduce, so none waits forever
for a chief that gave up.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile

import numpy as np
import tensorflow as tf

from tensorflow.core.protobuf import trackable_object_graph_pb2

from components.trainer.model import DLRM, build_model
from optimizers.sharded import gather_table, shard_spec

SHARDS_DIR = "row-shards-of-{n}"
SHARD_DIR = "shard-{r}"
_SHARDS_PATTERN = re.compile(r"^row-shards-of-(\d+)$")
_STEP = re.compile(r"^ckpt-(\d+)\.index$")
OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
# The chief holds the whole tables once, plus the chunk in flight and SavedModel writing buffers.
EXPORT_HEADROOM = 1.25


@dataclasses.dataclass(frozen=True)
class CheckpointPlace:
    """Where this worker saves and restores, for a run with `sharding` over `num_shards` workers."""

    root: str  # model_run_dir/checkpoints
    sharding: str  # "mirrored" or "row"
    num_shards: int = 1
    shard_index: int = 0

    @property
    def directory(self) -> str:
        if self.sharding == "mirrored":
            return self.root
        return os.path.join(self.root, SHARDS_DIR.format(n=self.num_shards), SHARD_DIR.format(r=self.shard_index))

    def _shard_counts(self) -> list[int]:
        """Worker counts of the row-sharded checkpoints under `root` that hold at least one checkpoint."""
        if not tf.io.gfile.isdir(self.root):
            return []
        counts = []
        for name in tf.io.gfile.listdir(self.root):
            match = _SHARDS_PATTERN.match(name.rstrip("/"))
            if match and any(_steps(os.path.join(self.root, name.rstrip("/"), d))
                             for d in tf.io.gfile.listdir(os.path.join(self.root, name.rstrip("/")))):
                counts.append(int(match.group(1)))
        return sorted(counts)

    def resume_point(self) -> ResumePoint | None:
        """The checkpoint to restore, or None for a fresh start.

        Row: the newest step that all shard folders of one worker count hold;
        when that count is not this run's, the point says to reshard first.

        Raises:
            ValueError: when `root` holds only checkpoints of the other placement.
        """
        mirrored = tf.train.latest_checkpoint(self.root) if tf.io.gfile.isdir(self.root) else None
        counts = self._shard_counts()
        if self.sharding == "mirrored":
            if mirrored is None and counts:
                raise ValueError(
                    f"{self.root} holds checkpoints of a --table-sharding row run (over "
                    f"{' and '.join(map(str, counts))} worker(s)); "
                    "this run uses --table-sharding mirrored. Resume with --table-sharding row, or use a new "
                    "model_run_dir")
            return ResumePoint(mirrored, _step_of(mirrored)) if mirrored else None
        if mirrored is not None:
            raise ValueError(
                f"{self.root} holds checkpoints of a --table-sharding mirrored run; this run uses --table-sharding "
                "row. Resume with --table-sharding mirrored, or use a new model_run_dir")
        best = None  # (step, this count first on a tie, count)
        for count in counts:
            common = None
            for r in range(count):
                steps = _steps(os.path.join(self.root, SHARDS_DIR.format(n=count), SHARD_DIR.format(r=r)))
                common = steps if common is None else common & steps
            if common:
                best = max(best or (-1, False, 0), (max(common), count == self.num_shards, count))
        if best is None:
            return None
        step, _, count = best
        return ResumePoint(os.path.join(self.directory, f"ckpt-{step}"), step,
                           reshard_from=None if count == self.num_shards else count)

    def shard_checkpoint(self, count: int, shard: int, step: int) -> str:
        return os.path.join(self.root, SHARDS_DIR.format(n=count), SHARD_DIR.format(r=shard), f"ckpt-{step}")


@dataclasses.dataclass(frozen=True)
class ResumePoint:
    """The checkpoint this worker restores; with `reshard_from`, written by that many workers and resharded first."""

    path: str
    step: int
    reshard_from: int | None = None


def _shard_keys(root, reader) -> set[str]:
    """Checkpoint keys of the shard variables (tables and slots) under `root`, from the object graph `reader` holds.

    A key names a path of attributes (`embedding_optimizer/_variables/3`);
    walking the saved object graph and the live objects side by side finds
    which keys belong to a shard. Shapes alone cannot tell: a shard can have
    the same number of rows for two worker counts.
    """
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor(OBJECT_GRAPH_KEY))
    keys, seen, queue = set(), {0}, [(0, root)]
    while queue:
        node_id, obj = queue.pop()
        node = graph.nodes[node_id]
        if shard_spec(obj) is not None:
            keys.update(a.checkpoint_key for a in node.attributes)
        children = tf.train.TrackableView(obj).children(obj)
        for ref in node.children:
            if ref.node_id not in seen and ref.local_name in children:
                seen.add(ref.node_id)
                queue.append((ref.node_id, children[ref.local_name]))
    return keys


def _step_of(path: str) -> int:
    return int(path.rsplit("-", 1)[1])


def reshard(place: CheckpointPlace, checkpoint: tf.train.Checkpoint, point: ResumePoint) -> str:
    """Writes this worker's checkpoint at `point.path`, resharded from the `point.reshard_from` workers' shards.

    The keys and shapes come from this run's own state (written once to a
    temporary place): a variable whose shape matches the old checkpoint's is
    copied from old shard 0 (mirrored variables are equal in every shard); a
    shard variable (table or slot) gets, at local row g // N, old shard
    g % M's row g // M, for every global id g with g % N == this shard. One
    old shard is in memory at a time. Every worker reads every old shard, so
    they must all be readable (a shared model_run_dir, as for any restore).
    Call it after a barrier: a worker that has written its new shard must
    not change what another decides to restore.
    """
    old_count, n, r = point.reshard_from, place.num_shards, place.shard_index
    old = [tf.train.load_checkpoint(place.shard_checkpoint(old_count, j, point.step)) for j in range(old_count)]
    old_shapes = old[0].get_variable_to_shape_map()
    with tempfile.TemporaryDirectory(prefix="embedopt-reshard-") as tmp:
        checkpoint.save_counter  # created on first use; the saved checkpoints have it, so the fresh one must too
        fresh = tf.train.load_checkpoint(checkpoint.write(os.path.join(tmp, "fresh")))
        shard_keys = _shard_keys(checkpoint, fresh)
        names, tensors = [], []
        for key, shape in sorted(fresh.get_variable_to_shape_map().items()):
            value = fresh.get_tensor(key)
            if key in shard_keys:
                if key not in old_shapes or old_shapes[key][1:] != shape[1:]:
                    raise ValueError(f"resharding {point.path}: the checkpoint of {old_count} worker(s) has no shard "
                                     f"{key!r} of shape [?, {shape[1:]}]; was it written by another model or optimizer?")
                for j, reader in enumerate(old):
                    rows = reader.get_tensor(key)
                    ids = j + old_count * np.arange(rows.shape[0], dtype=np.int64)
                    mine = (ids % n == r) & (ids // n < shape[0])
                    value[ids[mine] // n] = rows[mine]
            elif key != OBJECT_GRAPH_KEY:
                if old_shapes.get(key) != shape:
                    raise ValueError(f"resharding {point.path}: {key!r} has shape {old_shapes.get(key)} in the "
                                     f"checkpoint of {old_count} worker(s) and {shape} in this run")
                value = old[0].get_tensor(key)
            names.append(key)
            tensors.append(value)
        staged = os.path.join(tmp, "staged")
        tf.raw_ops.SaveV2(prefix=staged, tensor_names=names, shape_and_slices=[""] * len(names), tensors=tensors)
        tf.io.gfile.makedirs(place.directory)
        # Data before index: a checkpoint counts once its .index is there (see `_steps`).
        for suffix in sorted(os.listdir(tmp), key=lambda f: f.endswith(".index")):
            if suffix.startswith("staged."):
                tf.io.gfile.copy(os.path.join(tmp, suffix), point.path + suffix[len("staged"):], overwrite=True)
    return point.path


def _steps(directory: str) -> set[int]:
    """Steps of the complete checkpoints in `directory` (their .index file is written last)."""
    if not tf.io.gfile.isdir(directory):
        return set()
    return {int(m.group(1)) for m in (_STEP.match(n) for n in tf.io.gfile.listdir(directory)) if m}


def place_for(root: str, model: DLRM) -> CheckpointPlace:
    """Per-worker places ("row") when any table is split over the workers (row_wise or table_wise), else "mirrored"."""
    specs = [spec for spec in (shard_spec(t.embeddings) for t in model.tables) if spec is not None]
    if not specs:
        return CheckpointPlace(root, "mirrored")
    return CheckpointPlace(root, "row", specs[0].num_shards, specs[0].shard_index)


def gather_per_replica(strategy, fn) -> list:
    """`fn()` run on every replica, gathered (all workers get the list, in replica order)."""
    @tf.function
    def run():
        return strategy.gather(strategy.run(fn), axis=0)

    return run().numpy().tolist()


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
