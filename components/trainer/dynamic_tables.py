"""`--table-kind dynamic` in a run: which data and placements it takes, and what it reports.

Dynamic tables (`optimizers.DynamicEmbedding`) are keyed by the full
fingerprints of `embedopt preprocess --hash-buckets 0` (metadata `id_kind`
"fingerprint"); fixed tables need row indices. Either kind on the other
kind's ids is refused before anything is built: a fixed table cannot hold
2^64 rows, and a dynamic table on indices would work but waste its point.

Replicas: the layer runs its admission and eviction policy once per step,
on the global batch's keys (a `merge_call` gathers the replicas' keys in
replica order; across workers the replicas all-gather their distinct keys
first), and writes every replica's copy of its state, so the replicas of a
MirroredStrategy (several local devices) and the workers of a multi-worker
job (`--local-workers`, TF_CONFIG) admit the same keys to the same rows:
every worker holds the whole table (data_parallel). With `--table-sharding
row_wise` each table is split over the workers by key hash instead
(`optimizers.ShardedDynamicEmbedding`): every worker owns the keys that hash
to it, and the chief exports one whole table (`whole_dynamic_model`).

metrics.json gets `dynamic_tables`: per feature key, the table's capacity
and policy (`admit_after`, `eviction`, `default_row`), `rows_in_use`,
`admissions`, `evictions`, `lookups`, `default_lookups` (training lookups
of a key without a row, which read the default row: zeros or the shared
row) and `default_share` = default_lookups / lookups (null before any
lookup); the counters run over the whole run, resumed segments included.
"""

from __future__ import annotations

METRICS_KEY = "dynamic_tables"


def check_table_kind(config, metadata, metadata_path: str) -> None:
    """Raises ValueError when the table kind does not fit the ids of `metadata`."""
    fingerprints = metadata.fingerprint_ids
    if config.table_kind == "dynamic" and not fingerprints:
        raise ValueError(f"--table-kind dynamic needs fingerprint ids, but {metadata_path} has id_kind "
                         f"{metadata.id_kind!r} (ids are rows of a vocabulary or hash buckets). Preprocess with "
                         "`embedopt preprocess --hash-buckets 0`, or train with --table-kind fixed")
    if config.table_kind == "fixed" and fingerprints:
        raise ValueError(f"{metadata_path} holds full 64-bit fingerprint ids (preprocessed with --hash-buckets 0), "
                         "which fixed tables cannot index: train with --table-kind dynamic --table-capacity ROWS, "
                         "or preprocess with --hash-buckets N >= 2 or a vocabulary")


def split_tables(model) -> list:
    """The model's dynamic tables split over several workers by key hash (`--table-sharding row_wise`)."""
    from optimizers.dynamic_sharded import ShardedDynamicEmbedding

    tables = model.dynamic_tables() if hasattr(model, "dynamic_tables") else []
    return [t for t in tables if isinstance(t, ShardedDynamicEmbedding) and t.spec.num_shards > 1]


def table_metrics(model, strategy=None) -> dict | None:
    """Per feature key, the dynamic table's counters and default share; None with fixed tables.

    Tables split by key hash report the sum over their owners (one all-gather: every worker must call it) and
    their whole capacity."""
    tables = model.dynamic_tables() if hasattr(model, "dynamic_tables") else []
    if not tables:
        return None
    names = ("rows_in_use", "admissions", "evictions", "default_lookups", "lookups")
    summed = {}
    if split_tables(model):
        import tensorflow as tf

        from components.trainer.sharding import gather_arrays

        local = [[getattr(t, name).value for name in names] for t in tables]
        # [workers, tables, counters]: each owner's counters of its own keys.
        gathered = gather_arrays(strategy, lambda: tf.stack(local)[None])
        summed = {i: dict(zip(names, (int(v) for v in gathered[:, i].sum(axis=0)))) for i in range(len(tables))}
    out = {}
    for i, (key, table) in enumerate(zip(model.categorical_keys, tables)):
        counters = summed.get(i) or table.counters()
        lookups = counters["lookups"]
        out[key] = {"capacity": int(getattr(table, "total_capacity", table.capacity)),
                    "admit_after": int(table.admit_after),
                    "eviction": table.eviction, "default_row": table.default, "rows_in_use": counters["rows_in_use"],
                    "admissions": counters["admissions"], "evictions": counters["evictions"],
                    "lookups": lookups, "default_lookups": counters["default_lookups"],
                    "default_share": counters["default_lookups"] / lookups if lookups else None}
    return out


def report_lines(metrics: dict) -> list[str]:
    """The train report's lines on dynamic tables: totals, then one line per table."""
    tables = metrics.get(METRICS_KEY)
    if not tables:
        return []
    total = {name: sum(t[name] for t in tables.values())
             for name in ("capacity", "rows_in_use", "admissions", "evictions", "lookups", "default_lookups")}
    share = total["default_lookups"] / total["lookups"] if total["lookups"] else 0.0
    lines = [f"  dynamic tables: {total['rows_in_use']:,} of {total['capacity']:,} rows in use, "
             f"{total['admissions']:,} admissions, {total['evictions']:,} evictions, "
             f"{share:.1%} of training lookups read the default row"]
    for key, t in tables.items():
        default = "n/a" if t["default_share"] is None else f"{t['default_share']:.1%}"
        lines.append(f"    {key:<8} rows {t['rows_in_use']:,}/{t['capacity']:,}  admitted {t['admissions']:,}  "
                     f"evicted {t['evictions']:,}  default {default}")
    return lines


def whole_dynamic_model(strategy, model, metadata, config, is_chief: bool):
    """On the chief: a copy of `model` whose dynamic tables are whole, with every owner's keys and rows; None on
    the other workers. Every worker must call it (the gathers are collectives).

    Each whole table has N x ceil(capacity / N) rows, what the owners hold together, so no key is dropped;
    serving reads only the keys and rows (policy state is not copied)."""
    import dataclasses
    import math

    import numpy as np
    import tensorflow as tf

    from components.preprocess.metadata import RAW_CATEGORICAL
    from components.trainer.model import build_model
    from components.trainer.sharding import gather_arrays

    tables = model.dynamic_tables()
    n = tables[0].spec.num_shards
    twin = None
    if is_chief:
        capacities = config.capacities(metadata.categorical_keys)
        raw = [RAW_CATEGORICAL[i] if i < len(RAW_CATEGORICAL) else key
               for i, key in enumerate(metadata.categorical_keys)]
        whole = ",".join(f"{r}:{n * math.ceil(c / n)}" for r, c in zip(raw, capacities))
        twin = build_model(metadata, dataclasses.replace(config, table_capacity=whole), table_sharding="mirrored")
        for target, source in zip(twin.dense_variables(), model.dense_variables()):
            target.assign(source.numpy())

    for i, table in enumerate(tables):
        # Every owner's whole (equal-sized) variables, and how many rows of each are in use.
        used = gather_arrays(strategy, lambda t=table: tf.reshape(t.rows_in_use.value, [1]))
        keys = gather_arrays(strategy, lambda t=table: t.row_keys.value).reshape(n, -1)
        rows = gather_arrays(strategy, lambda t=table: t.embeddings.value).reshape(n, table.capacity, -1)
        if twin is None:
            continue
        target = twin.tables[i]
        all_keys = np.concatenate([keys[w, :used[w]] for w in range(n)])
        target.row_keys.assign(np.pad(all_keys, (0, target.capacity - len(all_keys))))
        target.embeddings.assign(np.concatenate([rows[w, :used[w]] for w in range(n)] +
                                                [np.zeros((target.capacity - len(all_keys), rows.shape[2]),
                                                          rows.dtype)]))
        target.rows_in_use.assign(len(all_keys))
        target.rebuild_index()
    return twin
