"""Resharding between table plans and worker counts (issue 21): the row moves, the folders, the resume point.

The row moves are checked against shards built independently with NumPy
slicing (row_wise: worker r holds `table[r::N]`, padded to ceil(rows / N);
table_wise: the owner holds the table, the others nothing; data_parallel:
everyone holds it), for every pair of layouts at N = 1..4. Whole training
runs under one plan resumed under another are in test_table_placements.py
and test_table_sharding.py.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import types

import numpy as np
import pytest
import tensorflow as tf

from components.trainer import reshard
from components.trainer.checkpoint_places import CheckpointPlace, CheckpointSet, Layout, LAYOUT_FILE

ROWS, DIM = 11, 3
PLACEMENTS = [("data_parallel", None), ("row_wise", None), ("table_wise", 0), ("table_wise", 1), ("table_wise", 3)]


def _layouts():
    for n in (1, 2, 3, 4):
        for placement, owner in PLACEMENTS:
            if owner is None or owner < n:
                yield Layout(n, ((placement, owner),))


def _shards(table: np.ndarray, layout: Layout) -> list[np.ndarray]:
    """Each worker's rows of `table` under `layout`, by slicing (independent of the code under test)."""
    (placement, owner), n = layout.tables[0], layout.num_workers
    if placement == "data_parallel" or n == 1:
        return [table.copy() for _ in range(n)]
    if placement == "table_wise":
        return [table.copy() if w == owner else table[:0].copy() for w in range(n)]
    local = math.ceil(len(table) / n)
    out = []
    for w in range(n):
        part = table[w::n]
        out.append(np.concatenate([part, np.zeros((local - len(part),) + table.shape[1:], table.dtype)]))
    return out


class _Readers:
    def __init__(self, shards):
        self.shards = shards

    def __call__(self, shard):
        return types.SimpleNamespace(get_tensor=lambda key, s=shard: self.shards[s])


@pytest.mark.parametrize("old, new", [(a, b) for a, b in itertools.product(_layouts(), repeat=2)
                                      if a.num_workers in (1, 2, 4) and b.num_workers in (1, 3, 4)])
def test_every_layout_reshards_onto_every_other(old, new):
    table = np.random.default_rng(0).normal(size=(ROWS, DIM)).astype(np.float32)
    source = CheckpointSet("/unused", "old", old, frozenset({5}))
    readers = _Readers(_shards(table, old))
    tables = [types.SimpleNamespace(input_dim=ROWS, name="t")]
    want = _shards(table, new)
    for worker in range(new.num_workers):
        fresh = np.full_like(want[worker], -7.0)  # padding rows keep the fresh value
        got = reshard._table_rows("k", list(fresh.shape), fresh, 0, tables, new, worker, source, readers)
        placement = new.tables[0][0]
        real = len(want[worker]) if placement != "row_wise" else len(table[worker::new.num_workers])
        np.testing.assert_array_equal(got[:real], want[worker][:real])
        assert (got[real:] == -7.0).all()


def test_a_shard_too_small_for_its_rows_is_refused():
    table = np.zeros((ROWS, DIM), np.float32)
    source = CheckpointSet("/unused", "old", Layout(2, (("table_wise", 1),)), frozenset({5}))
    readers = _Readers([table[:0], table[:4]])  # worker 1 should hold all 11 rows
    with pytest.raises(ValueError, match=r"'k' of table 't' has shape \[4, 3\] in worker 1's checkpoint"):
        reshard._table_rows("k", [ROWS, DIM], table.copy(), 0, [types.SimpleNamespace(input_dim=ROWS, name="t")],
                            Layout(1, (("data_parallel", None),)), 0, source, readers)


def test_each_layout_has_its_own_folder():
    rows2 = Layout(2, (("row_wise", None),) * 3)
    assert rows2.folder == "row-shards-of-2"  # the folder of --table-sharding row, as before plans
    assert Layout(2, (("data_parallel", None),) * 3).folder is None  # the chief's checkpoint
    mixed = Layout(2, (("row_wise", None), ("data_parallel", None), ("row_wise", None)))
    tw = [Layout(2, (("table_wise", o), ("data_parallel", None), ("row_wise", None))) for o in (0, 1)]
    folders = {mixed.folder, tw[0].folder, tw[1].folder, Layout(4, mixed.tables).folder}
    assert len(folders) == 4 and all(f.startswith(("shards-of-2-", "shards-of-4-")) for f in folders)
    assert Layout.from_json(mixed.to_json()) == mixed
    assert "1 data_parallel, 2 row_wise" in mixed.describe()


def _touch(directory, steps):
    os.makedirs(directory, exist_ok=True)
    for step in steps:
        open(os.path.join(directory, f"ckpt-{step}.index"), "w").close()


def _folder(root, layout, steps, record=True):
    for r in range(layout.num_workers):
        _touch(os.path.join(root, layout.folder, f"shard-{r}"), steps)
    if record:
        CheckpointPlace(root, layout).write_layout()


def test_resume_point_takes_the_newest_step_of_any_layout(tmp_path):
    root = str(tmp_path)
    mixed = Layout(2, (("data_parallel", None), ("row_wise", None)))
    table_wise = Layout(2, (("table_wise", 1), ("table_wise", 0)))
    replicated = Layout(1, (("data_parallel", None),) * 2)
    _folder(root, mixed, [10, 20])
    _touch(os.path.join(root, table_wise.folder, "shard-0"), [30])  # worker 1 was killed before saving 30
    _folder(root, table_wise, [20])
    # The data_parallel run (the chief's checkpoint) resumes from a split plan's step 20, resharding it.
    point = CheckpointPlace(root, replicated).resume_point()
    assert point.path == os.path.join(root, "ckpt-20") and point.step == 20
    # Both split plans hold step 20 whole; every worker picks the same one (the first folder by name).
    first = min((mixed, table_wise), key=lambda layout: layout.folder)
    assert point.source.folder == first.folder and point.source.layout == first
    # Its own folder wins a tie: no reshard.
    point = CheckpointPlace(root, table_wise, 1).resume_point()
    assert point.source is None and point.path == os.path.join(root, table_wise.folder, "shard-1", "ckpt-20")
    # A newer step of the replicated run wins over both; a four-worker run reshards from it.
    _touch(root, [40])
    four = Layout(4, (("row_wise", None), ("table_wise", 3)))
    point = CheckpointPlace(root, four, 3).resume_point()
    assert point.step == 40 and point.source.folder is None and point.reshard_from == 1
    assert point.path == os.path.join(root, four.folder, "shard-3", "ckpt-40")
    assert point.source.checkpoint(3, 40) == os.path.join(root, "ckpt-40")
    assert CheckpointPlace(str(tmp_path / "empty"), four).resume_point() is None


def test_a_folder_from_before_layout_files_takes_its_plan_from_plan_json(tmp_path):
    root = str(tmp_path)
    mixed = Layout(2, (("data_parallel", None), ("row_wise", None)))
    legacy = os.path.join(root, "row-shards-of-2")
    for r in range(2):
        _touch(os.path.join(legacy, f"shard-{r}"), [10])
    rows = Layout(2, (("row_wise", None),) * 2)
    # No plan.json: the folder was written by --table-sharding row, every table row_wise.
    assert CheckpointPlace(root, rows).checkpoint_sets()[0].layout == rows
    plan = {"num_workers": 2, "budget_bytes": 1, "tables": [
        {"name": f"table_{i}", "placement": p, "owner": o, "bytes_per_worker": [0, 0]} for i, (p, o) in
        enumerate(mixed.tables)]}
    with open(os.path.join(root, "plan.json"), "w") as f:
        json.dump(plan, f)
    point = CheckpointPlace(root, mixed).resume_point()
    assert point.source.folder == "row-shards-of-2" and point.source.layout == mixed
    # The row_wise run would write into that folder while reading another plan's checkpoints from it: refused.
    with pytest.raises(ValueError, match=r"row-shards-of-2 holds checkpoints of another table plan \(N=2: 1 "
                                         r"data_parallel, 1 row_wise\) than this run's \(N=2: 2 row_wise\)"):
        CheckpointPlace(root, rows).resume_point()
    # The chief records the folder's layout while plan.json still says it; plan.json may then change.
    CheckpointPlace(root, mixed).record_layouts()
    with open(os.path.join(legacy, LAYOUT_FILE)) as f:
        assert Layout.from_json(f.read()) == mixed
    os.remove(os.path.join(root, "plan.json"))
    assert CheckpointPlace(root, mixed).resume_point().source.layout == mixed


def test_reshard_refuses_a_variable_of_another_shape(tmp_path):
    old = tf.train.Checkpoint(v=tf.Variable(tf.zeros([3])))
    old.save_counter  # as a training run's checkpoints have it
    old_path = old.write(str(tmp_path / "ckpt-7"))
    assert old_path.endswith("ckpt-7")
    new = tf.train.Checkpoint(v=tf.Variable(tf.zeros([4])))
    source = CheckpointSet(str(tmp_path), None, Layout(1, ()), frozenset({7}))
    place = CheckpointPlace(str(tmp_path / "new"), Layout(2, ()), 0)
    point = types.SimpleNamespace(source=source, step=7, path=str(tmp_path / "new" / "ckpt-7"))
    with pytest.raises(ValueError, match=r"'v/.ATTRIBUTES/VARIABLE_VALUE' has shape \[3\] there and \[4\] in this run"):
        reshard.reshard(place, new, point, [], [])
