"""Checking, before a restore, that every optimizer slot in a checkpoint lands in the slot of the same name.

`tf.train.Checkpoint` restores a Keras 3 optimizer's variables by their
position in its `_variables` list: LazyAdam's `m` of table 0 sits where
Adagrad keeps its `accumulator`, so a run restarted with another optimizer
used to resume with Adam's first moment as its accumulator (NaN a step
later) or, LazyAdam -> Momentum, silently reuse `m` as the momentum. The
checkpoint's own object graph also records, under the optimizer's `_slots`,
which slot name and variable index each of those positions holds; this
module compares that with the optimizer about to be restored and refuses
any position whose slot name or variable differs. It reads only the
checkpoint's metadata, so it checks checkpoints written before this module
existed as well.
"""

from __future__ import annotations

import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"


def _child(graph, node_id: int, name: str) -> int | None:
    for child in graph.nodes[node_id].children:
        if child.local_name == name:
            return child.node_id
    return None


def _saved_layout(graph, optimizer_node: int) -> tuple[dict[int, tuple[str, int]], str] | None:
    """{position in `_variables`: (slot name, variable index)} and the optimizer's name, as the checkpoint holds
    them; None when the checkpoint does not say (not an embedopt optimizer)."""
    variables, slots = _child(graph, optimizer_node, "_variables"), _child(graph, optimizer_node, "_slots")
    if variables is None or slots is None:
        return None
    position = {c.node_id: int(c.local_name) for c in graph.nodes[variables].children}
    layout = {}
    for slot in graph.nodes[slots].children:
        for entry in graph.nodes[slot.node_id].children:
            layout[position.get(entry.node_id, -1)] = (slot.local_name, int(entry.local_name))
    iterations = _child(graph, optimizer_node, "_iterations")
    names = [a.full_name for a in graph.nodes[iterations].attributes] if iterations is not None else []
    return layout, (names[0].split("/")[0] if names else "unknown")


def _current_layout(optimizer) -> dict[int, tuple[str, int]] | None:
    slots = getattr(optimizer, "_slots", None)
    if not isinstance(slots, dict):
        return None
    position = {id(v): p for p, v in enumerate(optimizer._variables)}
    return {position.get(id(v), -1): (name, index) for name, vs in slots.items() for index, v in enumerate(vs)}


def _names(layout: dict[int, tuple[str, int]]) -> str:
    return ", ".join(sorted({name for name, _ in layout.values()})) or "none"


def check_slots_by_name(checkpoint_path: str, optimizers: dict[str, object]) -> None:
    """Raises ValueError when a slot of `checkpoint_path` would be restored into a slot of another name (or of
    another variable) of the optimizer stored under the same key in `optimizers` (e.g. "embedding_optimizer")."""
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(tf.train.load_checkpoint(checkpoint_path).get_tensor(OBJECT_GRAPH_KEY))
    for key, optimizer in optimizers.items():
        node = _child(graph, 0, key)
        saved = _saved_layout(graph, node) if node is not None else None
        current = _current_layout(optimizer)
        if saved is None or current is None:
            continue
        (saved_layout, saved_name), name = saved, getattr(optimizer, "name", type(optimizer).__name__)
        if saved_layout != current:
            raise ValueError(
                f"checkpoint {checkpoint_path}: its {key.replace('_', ' ')} ({saved_name}) has the slots "
                f"{_names(saved_layout)} over {len({i for _, i in saved_layout.values()})} variable(s); this run's "
                f"({name}) has {_names(current)} over {len({i for _, i in current.values()})}: restoring would put "
                "one slot's values into another. Resume with the optimizer and model the checkpoint was written "
                "with, or start fresh with another --model-run-dir (or --output)")
