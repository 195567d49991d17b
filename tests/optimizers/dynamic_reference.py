"""A NumPy/Python model of `DynamicEmbedding`'s policy, written from docs/dynamic_tables.md.

It never imports the implementation: keys live in a dict, stamps in arrays,
and the sketch hashes keys with its own SplitMix64 in uint64 NumPy.
"""

from __future__ import annotations

import numpy as np

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX1 = np.uint64(0xBF58476D1CE4E5B9)
MIX2 = np.uint64(0x94D049BB133111EB)
LFU_MAX_COUNT, LFU_MAX_STEP = 2**31 - 1, 2**32 - 1  # LFU compares counts and last-seen steps clamped to these


def sketch_columns(key: int, depth: int, width: int) -> list[int]:
    """The sketch column of `key` in each row: SplitMix64(key + (d + 1) * golden) mod width."""
    out = []
    with np.errstate(over="ignore"):
        for d in range(depth):
            z = np.array([key], dtype=np.int64).view(np.uint64)[0] + np.uint64(d + 1) * GOLDEN
            z = (z ^ (z >> np.uint64(30))) * MIX1
            z = (z ^ (z >> np.uint64(27))) * MIX2
            z = z ^ (z >> np.uint64(31))
            out.append(int(z % np.uint64(width)))
    return out


class ReferenceTable:
    """The admission / eviction policy, one batch at a time."""

    def __init__(self, capacity, admit_after=1, eviction="lru", sketch_depth=4, sketch_width=2**16,
                 sketch_decay_every=0):
        self.capacity = capacity
        self.admit_after = admit_after
        self.eviction = eviction
        self.depth, self.width = sketch_depth, sketch_width
        self.decay_every = sketch_decay_every
        self.sketch = np.zeros((sketch_depth, sketch_width), np.int64)
        self.row_of: dict[int, int] = {}
        self.key_of: dict[int, int] = {}
        self.stamp = np.zeros(capacity, np.int64)  # last-seen step (LRU) or count (LFU)
        self.last_seen = np.zeros(capacity, np.int64)  # LFU: the step each row was last read or assigned
        self.step = 0
        self.admissions = self.evictions = self.default_lookups = self.lookups = 0
        self.assigned: list[int] = []  # rows (re)assigned by the latest training batch, in order

    def train(self, keys) -> np.ndarray:
        """Applies one training batch; returns each key's row afterwards (-1: default)."""
        keys = [int(k) for k in np.asarray(keys).reshape(-1)]
        self.step += 1
        order, counts = [], {}
        for k in keys:
            if k not in counts:
                order.append(k)
                counts[k] = 0
            counts[k] += 1
        resident = [k for k in order if k in self.row_of]
        for k in resident:
            r = self.row_of[k]
            self.stamp[r] = self.step if self.eviction == "lru" else self.stamp[r] + counts[k]
            self.last_seen[r] = self.step
        newcomers = [k for k in order if k not in self.row_of]
        if self.admit_after > 1:
            if self.decay_every and self.step % self.decay_every == 0:
                self.sketch //= 2  # halved before this step's counts are added
            for k in newcomers:
                for d, c in enumerate(sketch_columns(k, self.depth, self.width)):
                    self.sketch[d, c] += counts[k]
            newcomers = [k for k in newcomers
                         if min(self.sketch[d, c] for d, c in enumerate(sketch_columns(k, self.depth, self.width)))
                         >= self.admit_after]
        protected = {self.row_of[k] for k in resident}
        in_use = len(self.key_of)
        fresh = list(range(in_use, self.capacity))
        # Eviction order: smallest stamp first (LFU: then the earliest last-seen step, both clamped), ties to the
        # lower row; never a row this batch reads.
        victims = sorted((r for r in range(in_use) if r not in protected), key=self._eviction_key)
        self.assigned = []
        for k in newcomers:
            if fresh:
                r = fresh.pop(0)
            elif victims:
                r = victims.pop(0)
                del self.row_of[self.key_of[r]]
                self.evictions += 1
            else:
                break
            self.row_of[k] = r
            self.key_of[r] = k
            self.stamp[r] = self.step if self.eviction == "lru" else counts[k]
            self.last_seen[r] = self.step
            self.assigned.append(r)
            self.admissions += 1
        rows = np.array([self.row_of.get(k, -1) for k in keys], np.int64)
        self.lookups += len(keys)
        self.default_lookups += int((rows < 0).sum())
        return rows

    def _eviction_key(self, r):
        if self.eviction == "lru":
            return self.stamp[r], r
        return min(max(self.stamp[r], 0), LFU_MAX_COUNT), min(max(self.last_seen[r], 0), LFU_MAX_STEP), r

    def rows(self, keys) -> np.ndarray:
        """Read-only lookup (serving)."""
        return np.array([self.row_of.get(int(k), -1) for k in np.asarray(keys).reshape(-1)], np.int64)


def owner(key: int, num_shards: int) -> int:
    """The worker owning `key` in a hash-sharded table: SplitMix64(key) (no offset) >> 33, mod N."""
    with np.errstate(over="ignore"):
        z = np.array([key], dtype=np.int64).view(np.uint64)[0]
        z = (z ^ (z >> np.uint64(30))) * MIX1
        z = (z ^ (z >> np.uint64(27))) * MIX2
        z = z ^ (z >> np.uint64(31))
    return int(z >> np.uint64(33)) % num_shards
