"""Bytes a worker sends per training step through a row-sharded table's exchange: counted and predicted.

NumPy only (no TensorFlow), so a placement planner can call it. Two levels:

- `step_bytes(kind, local_ids, dim)`: the exact count for given per-worker id
  batches, the same accounting as the exchanges' `ByteCounter`s
  (`optimizers.all_to_all`, `optimizers.row_exchange`); tests hold the two
  equal.
- `predicted_bytes_per_worker(kind, num_workers, dim, ids_per_worker, sample_ids)`:
  the expectation for N workers (any N, 64 and beyond) whose local batches are
  drawn from an id distribution (`sample_ids(rng, size)`, e.g. `zipf_sampler`
  over the table's rows), by drawing those batches and counting.

The two exchanges, per step (forward lookup + backward gradient), for a
worker whose batch has `c` ids of which `u` distinct, `d`-wide float32 rows:

    all_to_all:  (N - 1) x (W x (8 + 8 d) + 32)
        W = the largest number of distinct ids any worker asks of any owner
        (every block is padded to it); ids out (8 B), rows back (4d B), the
        rows' gradient home (4d B), plus a count and the width agreement per
        peer in each of the two forward exchanges.
    all_gather:  (N - 1) x (4 + 8 c) + 2 x [2 (N - 1) / N x G x 4 d]
        G = distinct ids of the global batch (all N workers); a ring
        all-gather of the ids and two ring all-reduces (forward, backward) of
        the `[G, d]` block. Bags (unequal id counts) also gather the counts
        and pad the ids to the longest: (N - 1) x (12 + 4 + 8 max c).

With ids spread over owners by `id % N`, W ~ u / N plus the spread of the
largest of N^2 pair counts, so all_to_all sends ~ (N - 1) / N x u x (8 + 8d):
bounded by the local batch. all_gather grows with G, i.e. with N.

Other placements (components/trainer/planner.py), `placement=`:
  table_wise (`owner` set): every worker asks the owner for all its distinct
      ids, so W = the largest u of any worker and all_to_all sends
      (N - 1) x (W x (8 + 8d) + 32): the padded block makes every worker pay
      the owner's fan-out, ~ (N - 1) x u rows, N times row_wise's. all_gather
      moves the same bytes as row_wise.
  data_parallel: no exchange; MultiWorkerMirroredStrategy all-gathers the
      `tf.IndexedSlices` gradient (ring): (N - 1) x (8 + c x (8 + 4d)) per
      worker (its indices and values, and their shapes), a prediction only
      (nothing counts these bytes in TensorFlow).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

ALL_TO_ALL = "all_to_all"
ALL_GATHER = "all_gather"
ROW_BYTES = 4  # float32 rows and gradients
ID_BYTES = 8  # int64 ids


def all_to_all_width(local_ids: Sequence[np.ndarray]) -> int:
    """W: the largest count of distinct ids a worker sends to one owner (`id % N`), self included, at least 1."""
    n = len(local_ids)
    widest = 1
    for ids in local_ids:
        distinct = np.unique(np.asarray(ids, np.int64).ravel())
        if distinct.size:
            widest = max(widest, int(np.bincount(distinct % n, minlength=n).max()))
    return widest


def all_to_all_step_bytes(local_ids: Sequence[np.ndarray], dim: int, owner: int | None = None) -> np.ndarray:
    """Bytes each worker sends in one step with the all-to-all exchange (the same for every worker).

    With an `owner`, the table is table_wise on that worker: every distinct id goes there."""
    n = len(local_ids)
    if n == 1:
        return np.zeros(1, np.int64)
    if owner is None:
        width = all_to_all_width(local_ids)
    else:
        width = max(1, max(np.unique(np.asarray(ids, np.int64).ravel()).size for ids in local_ids))
    per_worker = (n - 1) * (width * (ID_BYTES + 2 * ROW_BYTES * dim) + 32)
    return np.full(n, per_worker, np.int64)


def all_gather_step_bytes(local_ids: Sequence[np.ndarray], dim: int, bags: bool = False) -> np.ndarray:
    """Bytes each worker sends in one step with the all-gather exchange (`row_exchange`), per worker."""
    n = len(local_ids)
    if n == 1:
        return np.zeros(1, np.int64)
    flat = [np.asarray(ids, np.int64).ravel() for ids in local_ids]
    counts = np.array([ids.size for ids in flat], np.int64)
    distinct = np.unique(np.concatenate(flat)).size
    reduced = 2 * (n - 1) * distinct * dim * ROW_BYTES // n
    if bags:
        gathered = np.full(n, (n - 1) * (4 + 8) + (n - 1) * (4 + ID_BYTES * counts.max()), np.int64)
    else:
        gathered = (n - 1) * (4 + ID_BYTES * counts)
    return gathered + 2 * reduced


def data_parallel_step_bytes(local_ids: Sequence[np.ndarray], dim: int) -> np.ndarray:
    """Predicted bytes each worker sends in one step for a replicated table: the ring all-gather of its gradient."""
    n = len(local_ids)
    counts = np.array([np.asarray(ids).size for ids in local_ids], np.int64)
    return (n - 1) * (8 + counts * (ID_BYTES + ROW_BYTES * dim))


def step_bytes(kind: str, local_ids: Sequence[np.ndarray], dim: int, bags: bool = False,
               placement: str = "row_wise") -> np.ndarray:
    """Bytes each worker sends in one step (forward and backward) for the given per-worker id batches.

    `placement`: "row_wise" (default), "table_wise" (owned by worker 0) or
    "data_parallel" (no exchange: `kind` is ignored, the gradient all-gather)."""
    if placement == "data_parallel":
        return data_parallel_step_bytes(local_ids, dim)
    if placement not in ("row_wise", "table_wise"):
        raise ValueError(f"placement must be 'row_wise', 'table_wise' or 'data_parallel', got {placement!r}")
    if kind == ALL_TO_ALL:
        return all_to_all_step_bytes(local_ids, dim, owner=0 if placement == "table_wise" else None)
    if kind == ALL_GATHER:
        return all_gather_step_bytes(local_ids, dim, bags)
    raise ValueError(f"kind must be {ALL_TO_ALL!r} or {ALL_GATHER!r}, got {kind!r}")


def zipf_sampler(rows: int, exponent: float = 1.1) -> Callable[[np.random.Generator, int], np.ndarray]:
    """Ids in [0, rows) with P(id = r) ~ (r + 1)^-exponent (the benchmarks' distribution), as `sample_ids`."""
    if rows <= 0 or exponent == 1.0:
        raise ValueError(f"zipf_sampler needs rows > 0 and exponent != 1, got rows={rows}, exponent={exponent}")

    def sample(rng: np.random.Generator, size: int) -> np.ndarray:
        a = 1.0 - exponent
        x = (1.0 + rng.random(size) * ((rows + 1.0) ** a - 1.0)) ** (1.0 / a)
        return np.minimum(x.astype(np.int64) - 1, rows - 1)

    return sample


def predicted_bytes_per_worker(kind: str, num_workers: int, dim: int, ids_per_worker: int,
                               sample_ids: Callable[[np.random.Generator, int], np.ndarray], bags: bool = False,
                               trials: int = 3, seed: int = 0, placement: str = "row_wise") -> float:
    """Expected bytes the busiest worker sends per step, N local batches of `ids_per_worker` drawn from `sample_ids`.

    The mean over `trials` draws of `step_bytes(...).max()`. A draw of N x
    `ids_per_worker` ids costs a `np.unique` of that many: N = 64 with 50k ids
    each takes about a second.
    """
    if num_workers < 1 or ids_per_worker < 0 or dim < 1 or trials < 1:
        raise ValueError(f"need num_workers >= 1, ids_per_worker >= 0, dim >= 1, trials >= 1; got {num_workers}, "
                         f"{ids_per_worker}, {dim}, {trials}")
    rng = np.random.default_rng(seed)
    draws = [step_bytes(kind, [sample_ids(rng, ids_per_worker) for _ in range(num_workers)], dim, bags,
                        placement).max()
             for _ in range(trials)]
    return float(np.mean(draws))
