"""Resharding: writing this worker's checkpoint for its layout from the checkpoints of another layout.

A layout (components/trainer/checkpoint_places.py) puts row `g` of a table of
`rows` rows, on worker `w` of N, at a local row:

  data_parallel  every worker, local row g (the chief's checkpoint holds it)
  row_wise       worker g % N, local row g // N (ceil(rows / N) rows each; the last ones padding)
  table_wise @o  worker o, local row g (the others hold no rows)

So any layout reshards to any other, a row at a time: each local row of
this worker's new variables takes the row of the same global id from the
worker of the old layout that held it. The optimizer slots of a table move
with its rows; every other variable (dense layers, the step, the other
optimizer's state) is equal on every worker and is copied as it is.
"""

from __future__ import annotations

import math
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from components.trainer import planner

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


def held_ids(placement: str, owner: int | None, rows: int, num_workers: int, worker: int) -> np.ndarray:
    """Global id of each local row worker `worker` holds of a table of `rows` rows (padding rows: ids >= rows)."""
    if placement == planner.DATA_PARALLEL or num_workers == 1:
        return np.arange(rows, dtype=np.int64)
    if placement == planner.TABLE_WISE:
        return np.arange(rows if worker == owner else 0, dtype=np.int64)
    return worker + num_workers * np.arange(math.ceil(rows / num_workers), dtype=np.int64)


def holders(placement: str, owner: int | None, num_workers: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(worker, local row)` of each global id in `ids` under one table's placement over `num_workers`."""
    if placement == planner.DATA_PARALLEL or num_workers == 1:
        return np.zeros_like(ids), ids
    if placement == planner.TABLE_WISE:
        return np.full_like(ids, owner), ids
    return ids % num_workers, ids // num_workers


def _variable_tables(tables, optimizers) -> dict[int, int]:
    """{id of a live variable: index of its table}: the tables and every optimizer slot of them."""
    index = {}

    def add(variable, i):
        index[id(variable)] = i
        if isinstance(variable, keras.Variable):
            index[id(variable.value)] = i

    for i, table in enumerate(tables):
        add(table.embeddings, i)
    for optimizer in optimizers:
        slots = getattr(optimizer, "_slots", None)
        if not isinstance(slots, dict):
            continue
        for i, table in enumerate(tables):
            try:
                position = optimizer._get_variable_index(table.embeddings)
            except (KeyError, ValueError):
                continue  # not this optimizer's variable
            for variables in slots.values():
                add(variables[position], i)
    return index


def table_keys(root, reader, tables, optimizers) -> dict[str, int]:
    """{checkpoint key: table index} for the tables and their slots in the checkpoint `reader` holds of `root`.

    A key names a path of attributes (`embedding_optimizer/_variables/3`);
    walking the saved object graph and the live objects side by side finds
    which keys hold which table's rows. Shapes alone cannot tell: a shard can
    have as many rows as a whole table, or as another table's shard.
    """
    variables = _variable_tables(tables, optimizers)
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor(OBJECT_GRAPH_KEY))
    keys, seen, queue = {}, {0}, [(0, root)]
    while queue:
        node_id, obj = queue.pop()
        node = graph.nodes[node_id]
        if id(obj) in variables:
            keys.update({a.checkpoint_key: variables[id(obj)] for a in node.attributes})
        children = tf.train.TrackableView(obj).children(obj)
        for ref in node.children:
            if ref.node_id not in seen and ref.local_name in children:
                seen.add(ref.node_id)
                queue.append((ref.node_id, children[ref.local_name]))
    return keys


def reshard(place, checkpoint: tf.train.Checkpoint, point, tables, optimizers, write: bool = True) -> str:
    """Writes this worker's checkpoint at `point.path` from `point.source`, the same step in another layout.

    The keys and shapes come from this run's own state (written once to a
    temporary place). A table variable or slot gets, at each local row, the
    row of the same global id from the old worker that held it (module
    docstring); any other variable is copied from the old set's first
    checkpoint, and must have the same shape there. One old tensor is in
    memory at a time. Every worker reads the old checkpoints it needs, so
    they must be readable by all (a shared model_run_dir, as for any restore).
    Call it after a barrier: a worker that has written its new part must not
    change what another decides to restore. With `write=False` (a non-chief
    worker whose layout keeps every table replicated: the chief writes the one
    checkpoint) nothing is written.

    Raises:
        ValueError: the old checkpoint lacks a variable of this run, or holds it with another shape (another
            model or optimizer: the run record's check names those first).
    """
    source, new, r = point.source, place.layout, place.shard_index
    readers: dict[int, object] = {}

    def reader(shard):
        if shard not in readers:
            readers[shard] = tf.train.load_checkpoint(source.checkpoint(shard, point.step))
        return readers[shard]

    old_shapes = reader(0).get_variable_to_shape_map()
    with tempfile.TemporaryDirectory(prefix="embedopt-reshard-") as tmp:
        checkpoint.save_counter  # created on first use; the saved checkpoints have it, so the fresh one must too
        fresh = tf.train.load_checkpoint(checkpoint.write(os.path.join(tmp, "fresh")))
        keys = table_keys(checkpoint, fresh, tables, optimizers)
        names, tensors = [], []
        for key, shape in sorted(fresh.get_variable_to_shape_map().items()):
            if key == OBJECT_GRAPH_KEY:
                value = fresh.get_tensor(key)  # this run's object graph: what the restore matches keys by
            elif key in keys:
                value = _table_rows(key, shape, fresh.get_tensor(key), keys[key], tables, new, r, source, reader)
            else:
                if old_shapes.get(key) != shape:
                    raise ValueError(f"resharding step {point.step} from {source.layout.describe()}: {key!r} has "
                                     f"shape {old_shapes.get(key)} there and {shape} in this run")
                value = reader(0).get_tensor(key)
            names.append(key)
            tensors.append(value)
        if not write:
            return point.path
        staged = os.path.join(tmp, "staged")
        tf.raw_ops.SaveV2(prefix=staged, tensor_names=names, shape_and_slices=[""] * len(names), tensors=tensors)
        tf.io.gfile.makedirs(os.path.dirname(point.path))
        # Data before index: a checkpoint counts once its .index is there (checkpoint_places._steps).
        for suffix in sorted(os.listdir(tmp), key=lambda f: f.endswith(".index")):
            if suffix.startswith("staged."):
                tf.io.gfile.copy(os.path.join(tmp, suffix), point.path + suffix[len("staged"):], overwrite=True)
    return point.path


def _table_rows(key, shape, value, table, tables, new, worker, source, reader) -> np.ndarray:
    """`value` (this run's fresh variable `key` of table `table`) with every held row taken from `source`."""
    rows = int(tables[table].input_dim)
    placement, owner = new.tables[table]
    ids = held_ids(placement, owner, rows, new.num_workers, worker)
    if len(ids) != shape[0]:
        raise ValueError(f"resharding: {key!r} of table {tables[table].name!r} has {shape[0]} rows in this run, "
                         f"where its layout says {len(ids)}")
    local = np.arange(len(ids))
    keep = ids < rows
    ids, local = ids[keep], local[keep]
    old_placement, old_owner = source.layout.tables[table]
    shards, old_local = holders(old_placement, old_owner, source.layout.num_workers, ids)
    for shard in np.unique(shards):
        rows_there = reader(int(shard)).get_tensor(key)
        mine = shards == shard
        if rows_there.shape[1:] != tuple(shape[1:]) or (mine.any() and old_local[mine].max() >= rows_there.shape[0]):
            raise ValueError(f"resharding from {source.layout.describe()}: {key!r} of table "
                             f"{tables[table].name!r} has shape {list(rows_there.shape)} in worker {shard}'s "
                             f"checkpoint, which cannot hold its rows of this run's shape {list(shape)}")
        value[local[mine]] = rows_there[old_local[mine]]
    return value
