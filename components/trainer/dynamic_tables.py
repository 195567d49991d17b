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
every worker holds the whole table (data_parallel). Row sharding a dynamic
table is refused (fn_args).

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


def table_metrics(model) -> dict | None:
    """Per feature key, the dynamic table's counters and default share; None with fixed tables."""
    tables = model.dynamic_tables() if hasattr(model, "dynamic_tables") else []
    if not tables:
        return None
    out = {}
    for key, table in zip(model.categorical_keys, tables):
        counters = table.counters()
        lookups = counters["lookups"]
        out[key] = {"capacity": int(table.capacity), "admit_after": int(table.admit_after),
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
