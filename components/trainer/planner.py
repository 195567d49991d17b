"""Where each embedding table lives: a pure planner from sizes, a memory budget and N workers to a `Plan`.

Three placements (docs/sharding.md):
  data_parallel  every worker holds the whole table and its slots; its sparse
                 gradient is all-gathered (MultiWorkerMirroredStrategy's
                 IndexedSlices path). Today's `--table-sharding mirrored`.
  table_wise     one worker (the owner) holds the whole table; the others
                 hold none and look rows up from the owner over the exchange.
  row_wise       worker r holds rows id % N == r (`optimizers.ShardedEmbedding`).
                 Today's `--table-sharding row`.

A table's state is `rows x (dim + slot columns) x 4` bytes (float32 rows and
optimizer slots). `plan_tables(..., "auto")` keeps small tables
data_parallel (at most 1/64 of the budget each, 1/4 together: one gradient
all-gather, no extra collectives), bin-packs the tables that fit in a
quarter of one worker and a fair share (1/N) of the non-replicated state
table_wise onto the least loaded worker unless that would send more bytes
per step than row_wise (the owner serves every worker's ids: with the local
batch's ids known, that is whenever N > 1 and the table is looked up), and
row-shards the rest (their 1/N share is reserved on every worker before
packing). A plan that does not fit raises `PlanError` naming
the table and the numbers. The planner imports no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
import math

from components.launcher.quantity import quantity_value

DATA_PARALLEL = "data_parallel"
TABLE_WISE = "table_wise"
ROW_WISE = "row_wise"
AUTO = "auto"
PLACEMENTS = (DATA_PARALLEL, TABLE_WISE, ROW_WISE)
# `--table-sharding` names kept from before the planner.
ALIASES = {"mirrored": DATA_PARALLEL, "row": ROW_WISE}
BYTES_PER_VALUE = 4
# auto: a table of at most this share of the budget is replicated, while the replicated ones total at most
# DATA_PARALLEL_TOTAL of it; a table of at most TABLE_WISE_SHARE goes whole to one worker.
DATA_PARALLEL_SHARE = 1 / 64
DATA_PARALLEL_TOTAL = 1 / 4
TABLE_WISE_SHARE = 1 / 4
# Optimizer slots per table row, in multiples of the row width ("rowwise_adagrad": one scalar per row).
SLOTS_PER_ROW = {"sgd": 0, "decaying_sgd": 0, "momentum": 1, "adagrad": 1, "adam": 2, "lazy_adam": 2, "adamw": 2,
                 "ftrl": 2}
SCALAR_SLOTS = {"rowwise_adagrad": 1}


class PlanError(ValueError):
    """A model whose tables cannot be placed within the budget."""


@dataclasses.dataclass(frozen=True)
class Table:
    """One embedding table: `rows` ids of `dim` columns (wide column included), `slot_columns` slot values a row."""

    name: str
    rows: int
    dim: int
    slot_columns: int = 0
    ids_per_worker: int = 0  # ids one worker looks up per step (its local batch x ids per example)

    @property
    def state_bytes(self) -> int:
        """Rows and optimizer slots of the whole table, float32."""
        return self.rows * (self.dim + self.slot_columns) * BYTES_PER_VALUE

    def step_bytes(self, placement: str, n: int) -> int:
        """Bytes a worker sends per step for this table, at most (every id distinct; optimizers/exchange_cost.py).

        row_wise: (N - 1) / N of its ids out, their rows back and gradients home; table_wise: all of them to and
        from the owner, whose fan-out pads every worker's block, so N - 1 times that; data_parallel: the ring
        all-gather of its IndexedSlices gradient, (N - 1) x ids x (8 + 4 dim).
        """
        c, exchanged = self.ids_per_worker, 8 + 2 * BYTES_PER_VALUE * self.dim
        if n == 1 or c == 0:
            return 0
        if placement == ROW_WISE:
            return math.ceil((n - 1) * c / n) * exchanged
        if placement == TABLE_WISE:
            return (n - 1) * c * exchanged
        return (n - 1) * c * (8 + BYTES_PER_VALUE * self.dim)


@dataclasses.dataclass(frozen=True)
class TablePlacement:
    name: str
    placement: str
    owner: int | None  # the worker holding a table_wise table; None otherwise
    bytes_per_worker: tuple[int, ...]  # the table's state on each worker
    step_bytes: int = 0  # what a worker sends per step for it, at most (`Table.step_bytes`)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Each table's placement and the bytes it puts on each of `num_workers` workers."""

    num_workers: int
    budget_bytes: int
    tables: tuple[TablePlacement, ...]

    def worker_bytes(self) -> list[int]:
        return [sum(t.bytes_per_worker[w] for t in self.tables) for w in range(self.num_workers)]

    def layout(self) -> tuple[tuple[str, int | None], ...]:
        """`(placement, owner)` per table: what a checkpoint's variables depend on."""
        return tuple((t.placement, t.owner) for t in self.tables)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        data = json.loads(text)
        tables = tuple(TablePlacement(t["name"], t["placement"], t["owner"], tuple(t["bytes_per_worker"]),
                                      int(t.get("step_bytes", 0))) for t in data["tables"])
        return cls(int(data["num_workers"]), int(data["budget_bytes"]), tables)

    def describe(self) -> str:
        """The plan as a table: one line per embedding table, then the total per worker."""
        lines = [f"table plan over {self.num_workers} worker(s), budget {_gib(self.budget_bytes)} per worker:",
                 f"  {'table':<16} {'placement':<14} {'owner':>5} {'bytes per worker':>18} {'sent per step':>14}"]
        for t in self.tables:
            owner = "-" if t.owner is None else str(t.owner)
            lines.append(f"  {t.name:<16} {t.placement:<14} {owner:>5} {_gib(max(t.bytes_per_worker)):>18} "
                         f"{_gib(t.step_bytes):>14}")
        sent = sum(t.step_bytes for t in self.tables)
        lines.append(f"  {'total (max)':<16} {'':<14} {'':>5} {_gib(max(self.worker_bytes())):>18} {_gib(sent):>14}")
        return "\n".join(lines)


def _gib(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n / 2**10:.2f} KiB"


def canonical(placement: str) -> str:
    """`placement` with the old names ("mirrored", "row") mapped to the new ones."""
    name = ALIASES.get(placement, placement)
    if name not in PLACEMENTS + (AUTO,):
        raise ValueError(f"table placement must be one of {PLACEMENTS + (AUTO,) + tuple(ALIASES)}, got {placement!r}")
    return name


def slot_columns(optimizer: str, dim: int) -> int:
    """Slot values per table row that `optimizer` keeps for a table of width `dim`."""
    if optimizer in SCALAR_SLOTS:
        return SCALAR_SLOTS[optimizer]
    if optimizer not in SLOTS_PER_ROW:
        raise ValueError(f"unknown optimizer {optimizer!r}; known: {sorted(SLOTS_PER_ROW) + sorted(SCALAR_SLOTS)}")
    return SLOTS_PER_ROW[optimizer] * dim


def parse_budget(text: str | int) -> int:
    """Bytes from a Kubernetes quantity ("16Gi", "512M") or a plain number of bytes; ValueError otherwise."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        try:
            value = int(quantity_value(str(text).strip()))
        except (ValueError, ArithmeticError) as err:
            raise ValueError(f"memory budget {text!r} is not a quantity like '16Gi' or a number of bytes") from err
    if value < 1:
        raise ValueError(f"memory budget must be at least 1 byte, got {text!r}")
    return value


def _row_wise_bytes(table: Table, n: int) -> int:
    return math.ceil(table.rows / n) * (table.dim + table.slot_columns) * BYTES_PER_VALUE


def plan_tables(tables: list[Table], num_workers: int, budget_bytes: int, placement: str = AUTO) -> Plan:
    """Places every table (all with `placement`, or chosen per table for "auto") within `budget_bytes` per worker.

    Raises:
        PlanError: a table, or the tables together, need more than the budget
            on some worker; the message names the table and the bytes.
    """
    n = int(num_workers)
    if n < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers!r}")
    placement = canonical(placement)
    if placement == AUTO:
        chosen = _auto(tables, n, budget_bytes)
    else:
        chosen = {t.name: placement for t in tables}
    free = [budget_bytes] * n
    placed: dict[str, TablePlacement] = {}
    # Replicated and row-wise tables load every worker alike; table_wise ones are packed onto the rest.
    for table in tables:
        kind = chosen[table.name]
        if kind == TABLE_WISE:
            continue
        share = table.state_bytes if kind == DATA_PARALLEL else _row_wise_bytes(table, n)
        if share > min(free):
            _refuse(table, kind, share, min(free), budget_bytes, n)
        free = [f - share for f in free]
        placed[table.name] = TablePlacement(table.name, kind, None, (share,) * n, table.step_bytes(kind, n))
    for table in sorted((t for t in tables if chosen[t.name] == TABLE_WISE), key=lambda t: -t.state_bytes):
        owner = max(range(n), key=lambda w: (free[w], -w))
        if table.state_bytes > free[owner]:
            _refuse(table, TABLE_WISE, table.state_bytes, free[owner], budget_bytes, n)
        free[owner] -= table.state_bytes
        placed[table.name] = TablePlacement(table.name, TABLE_WISE, owner,
                                            tuple(table.state_bytes if w == owner else 0 for w in range(n)),
                                            table.step_bytes(TABLE_WISE, n))
    return Plan(n, int(budget_bytes), tuple(placed[t.name] for t in tables))


def _auto(tables: list[Table], n: int, budget: int) -> dict[str, str]:
    """Placement per table name: by size, and table_wise only where it sends no more bytes than row_wise."""
    if n == 1:
        return {t.name: DATA_PARALLEL for t in tables}
    chosen, replicated = {}, 0
    for table in sorted(tables, key=lambda t: t.state_bytes):
        if (table.state_bytes <= DATA_PARALLEL_SHARE * budget
                and replicated + table.state_bytes <= DATA_PARALLEL_TOTAL * budget):
            chosen[table.name] = DATA_PARALLEL
            replicated += table.state_bytes
    rest = sorted((t for t in tables if t.name not in chosen), key=lambda t: -t.state_bytes)
    free = [budget - replicated] * n
    # A table above a quarter of the budget, or above a fair share (1/N) of what is not replicated, would leave
    # the packing unbalanced: it is split by rows instead.
    fair = sum(t.state_bytes for t in rest) / n
    big = [t for t in rest if t.state_bytes > min(TABLE_WISE_SHARE * budget, fair)]
    for table in big:
        chosen[table.name] = ROW_WISE
        free = [f - _row_wise_bytes(table, n) for f in free]
    for table in rest:
        if table.name in chosen:
            continue
        owner = max(range(n), key=lambda w: free[w])
        if table.step_bytes(TABLE_WISE, n) > table.step_bytes(ROW_WISE, n):
            # Whole on one worker, its owner would send (N - 1) times what a row-sharded table costs each
            # worker (every other worker's ids come to it): the bytes decide for row_wise.
            chosen[table.name] = ROW_WISE
            free = [f - _row_wise_bytes(table, n) for f in free]
        elif table.state_bytes <= free[owner]:
            chosen[table.name] = TABLE_WISE
            free[owner] -= table.state_bytes
        else:
            # No single worker has room left: spread it over all of them instead.
            chosen[table.name] = ROW_WISE
            free = [f - _row_wise_bytes(table, n) for f in free]
    return chosen


def _refuse(table: Table, kind: str, need: int, free: int, budget: int, n: int) -> None:
    whole = table.state_bytes
    raise PlanError(
        f"table {table.name!r} ({table.rows:,} rows x ({table.dim} + {table.slot_columns} slot) columns x "
        f"{BYTES_PER_VALUE} bytes = {_gib(whole)}) needs {_gib(need)} per worker as {kind}, but only {_gib(free)} of "
        f"the {_gib(budget)} budget is left over {n} worker(s); use more workers, a larger "
        "--memory-budget-per-worker, fewer rows or --table-sharding row_wise")
