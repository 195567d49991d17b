"""Where a run's checkpoints go, and which checkpoint it resumes from, whatever plan and worker count wrote it.

Under `model_run_dir/checkpoints/`, one folder per layout (a worker count N
and each table's placement and owner, components/trainer/planner.py):

  ckpt-*                              every table data_parallel: the chief's checkpoint, which every worker restores
  row-shards-of-N/shard-R/ckpt-*      every table row_wise: worker R's own rows (the folder of `--table-sharding row`)
  shards-of-N-TAG/shard-R/ckpt-*      any other plan that splits a table (table_wise, or row_wise beside
                                      data_parallel); TAG is 8 hex digits of the layout's digest, so two
                                      plans never share a folder

Each shards folder holds `layout.json` (N and every table's placement and
owner), written by the chief before any worker writes a checkpoint there. A
folder without one was written before it existed: it holds the plan of
`checkpoints/plan.json` when that plan has N workers, else every table
row_wise.

A run resumes from the newest step that every checkpoint of one folder holds,
so a kill between two workers' saves cannot mix steps; on a tie, from its
own folder. When that folder is another layout's (another N, another plan,
replicated tables now split or split tables now replicated), every worker
first writes its part of this run's layout from it (components/trainer/reshard.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re

import tensorflow as tf

from components.trainer import planner
from optimizers.sharded import shard_spec

ROW_SHARDS_DIR = "row-shards-of-{n}"
SHARDS_DIR = "shards-of-{n}-{tag}"
SHARD_DIR = "shard-{r}"
LAYOUT_FILE = "layout.json"
LEGACY_PLAN_FILE = "plan.json"  # components/trainer/table_plan.py PLAN_FILE, the plan of the latest run
_FOLDER = re.compile(r"^(?:row-shards-of-(\d+)|shards-of-(\d+)-([0-9a-f]{8}))$")
_STEP = re.compile(r"^ckpt-(\d+)\.index$")


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where every table's rows sit: `(placement, owner)` per table (the model's order) over `num_workers`."""

    num_workers: int
    tables: tuple[tuple[str, int | None], ...]

    @property
    def split(self) -> bool:
        """Whether any table is split over the workers (each worker then checkpoints its own part)."""
        return any(placement != planner.DATA_PARALLEL for placement, _ in self.tables)

    @property
    def folder(self) -> str | None:
        """This layout's folder under `checkpoints/`; None for the chief's checkpoint of replicated tables."""
        if not self.split:
            return None
        if all(placement == planner.ROW_WISE for placement, _ in self.tables):
            return ROW_SHARDS_DIR.format(n=self.num_workers)
        digest = hashlib.sha256(json.dumps([self.num_workers, [list(t) for t in self.tables]]).encode()).hexdigest()
        return SHARDS_DIR.format(n=self.num_workers, tag=digest[:8])

    def describe(self) -> str:
        if not self.split:
            return "every table data_parallel"
        parts = [p + (f"@{o}" if o is not None else "") for p, o in self.tables]
        kinds = sorted(set(parts))
        return f"N={self.num_workers}: " + ", ".join(f"{parts.count(k)} {k}" for k in kinds)

    def to_json(self) -> str:
        return json.dumps({"num_workers": self.num_workers, "tables": [list(t) for t in self.tables]}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Layout:
        data = json.loads(text)
        return cls(int(data["num_workers"]), tuple((str(p), o if o is None else int(o)) for p, o in data["tables"]))


def layout_of(model) -> Layout:
    """The layout of a built model's fixed tables, from their shard variables (`optimizers.sharded.ShardSpec`)."""
    specs = [shard_spec(t.embeddings) for t in model.tables]
    tables = tuple((planner.DATA_PARALLEL, None) if s is None else
                   (planner.TABLE_WISE, s.owner) if s.owner is not None else (planner.ROW_WISE, None) for s in specs)
    counts = {s.num_shards for s in specs if s is not None}
    return Layout(counts.pop() if counts else 1, tables)


@dataclasses.dataclass(frozen=True)
class CheckpointSet:
    """The complete checkpoints of one layout: `folder` under `root` (None: `root` itself) at `steps`."""

    root: str
    folder: str | None
    layout: Layout
    steps: frozenset[int]

    def checkpoint(self, shard: int, step: int) -> str:
        """Worker `shard`'s checkpoint of `step` (for replicated tables: the one checkpoint)."""
        if self.folder is None:
            return os.path.join(self.root, f"ckpt-{step}")
        return os.path.join(self.root, self.folder, SHARD_DIR.format(r=shard), f"ckpt-{step}")


@dataclasses.dataclass(frozen=True)
class ResumePoint:
    """The checkpoint this worker restores; with `source`, first written there from that other layout's set."""

    path: str
    step: int
    source: CheckpointSet | None = None

    @property
    def reshard_from(self) -> int | None:
        """The worker count of the set to reshard from, or None when this run's own set holds the step."""
        return self.source.layout.num_workers if self.source is not None else None


@dataclasses.dataclass(frozen=True)
class CheckpointPlace:
    """Where this worker saves and restores, for a run whose tables have `layout`."""

    root: str  # model_run_dir/checkpoints
    layout: Layout
    shard_index: int = 0

    @property
    def sharding(self) -> str:
        """"row" when every worker checkpoints its own part, "mirrored" when the chief's checkpoint serves all."""
        return "row" if self.layout.split else "mirrored"

    @property
    def num_shards(self) -> int:
        return self.layout.num_workers if self.layout.split else 1

    @property
    def directory(self) -> str:
        if self.layout.folder is None:
            return self.root
        return os.path.join(self.root, self.layout.folder, SHARD_DIR.format(r=self.shard_index))

    def write_layout(self, folder: str | None = None) -> None:
        """Records this layout in its folder, or in `folder` (the chief, before any worker writes a checkpoint
        there)."""
        folder = folder or self.layout.folder
        if folder is None:
            return
        path = os.path.join(self.root, folder, LAYOUT_FILE)
        tf.io.gfile.makedirs(os.path.dirname(path))
        with tf.io.gfile.GFile(path + ".tmp", "w") as f:
            f.write(self.layout.to_json())
        tf.io.gfile.rename(path + ".tmp", path, overwrite=True)

    def record_layouts(self) -> None:
        """Writes `layout.json` into every shards folder that has none (the chief, before `plan.json` changes):
        their layout is read from `plan.json` only while it still holds the plan that wrote them."""
        for found in self.checkpoint_sets():
            path = os.path.join(self.root, found.folder or "", LAYOUT_FILE)
            if found.folder is not None and not tf.io.gfile.exists(path):
                CheckpointPlace(self.root, found.layout).write_layout(found.folder)

    def checkpoint_sets(self) -> list[CheckpointSet]:
        """Every layout's complete checkpoints under `root` (sets with no complete step left out)."""
        if not tf.io.gfile.isdir(self.root):
            return []
        found = []
        replicated = _steps(self.root)
        if replicated:
            found.append(CheckpointSet(self.root, None, Layout(1, ((planner.DATA_PARALLEL, None),) *
                                                                len(self.layout.tables)), frozenset(replicated)))
        for name in sorted(n.rstrip("/") for n in tf.io.gfile.listdir(self.root)):
            match = _FOLDER.match(name)
            if not match:
                continue
            count = int(match.group(1) or match.group(2))
            common = None
            for r in range(count):
                steps = _steps(os.path.join(self.root, name, SHARD_DIR.format(r=r)))
                common = steps if common is None else common & steps
            if common:
                found.append(CheckpointSet(self.root, name, self._layout_in(name, count), frozenset(common)))
        return found

    def _layout_in(self, name: str, count: int) -> Layout:
        path = os.path.join(self.root, name, LAYOUT_FILE)
        if tf.io.gfile.exists(path):
            with tf.io.gfile.GFile(path) as f:
                return Layout.from_json(f.read())
        legacy = os.path.join(self.root, LEGACY_PLAN_FILE)
        if tf.io.gfile.exists(legacy):
            with tf.io.gfile.GFile(legacy) as f:
                plan = planner.Plan.from_json(f.read())
            if plan.num_workers == count and len(plan.tables) == len(self.layout.tables):
                return Layout(count, plan.layout())
        return Layout(count, ((planner.ROW_WISE, None),) * len(self.layout.tables))

    def resume_point(self) -> ResumePoint | None:
        """The checkpoint to restore, or None for a fresh start: the newest step that one layout's set holds
        whole, this run's own on a tie; from another layout's set, the point says to reshard first.

        Raises:
            ValueError: when this run's folder holds checkpoints of another layout (only a folder written before
                `layout.json` existed can), which resharding would overwrite while reading them.
        """
        sets = self.checkpoint_sets()
        for found in sets:
            if found.folder == self.layout.folder and found.layout != self.layout:
                raise ValueError(
                    f"{os.path.join(self.root, found.folder)} holds checkpoints of another table plan "
                    f"({found.layout.describe()}) than this run's ({self.layout.describe()}), in the folder this "
                    "run would write (it was written before each plan had its own folder). Resume with that plan, move "
                    "the folder away, or use a new model_run_dir")
        best = max(sets, key=lambda s: (max(s.steps), s.folder == self.layout.folder), default=None)
        if best is None:
            return None
        step = max(best.steps)
        path = os.path.join(self.directory, f"ckpt-{step}")
        return ResumePoint(path, step, None if best.folder == self.layout.folder else best)


def _steps(directory: str) -> set[int]:
    """Steps of the complete checkpoints in `directory` (their .index file is written last)."""
    if not tf.io.gfile.isdir(directory):
        return set()
    return {int(m.group(1)) for m in (_STEP.match(n) for n in tf.io.gfile.listdir(directory)) if m}


def place_for(root: str, model) -> CheckpointPlace:
    """This worker's place for `model`'s layout: its own shard folder when a table is split, else `root`."""
    layout = layout_of(model)
    specs = [spec for spec in (shard_spec(t.embeddings) for t in model.tables) if spec is not None]
    return CheckpointPlace(root, layout, specs[0].shard_index if specs else 0)
