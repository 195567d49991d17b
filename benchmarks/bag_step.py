"""Issue 20: a multi-hot (bag) training step, ours vs TorchRec's fbgemm sum pooling, on the same ragged ids.

One step = `features` bags per example, each of a random length 0..2*mean
(average `mean_bag` ids, as MLPerf DLRM-DCNv2's multi-hot Criteo features
average about 10 per feature), Zipf ids in one `rows x dim` float32 table,
sum-pooled per bag, the `features` pooled rows of an example concatenated
into a linear head, binary cross-entropy, backward and the optimizer's
apply. Ours is `SparseEmbedding(combiner="sum")` on a `tf.RaggedTensor`
(the fused kernel, and the TF-ops path in the same child); the peer is
fbgemm's `SplitTableBatchedEmbeddingBagsCodegen` with the same offsets
(what TorchRec's `EmbeddingBagCollection` runs on the CPU) for SGD, Adagrad
and row-wise Adagrad, and `torch.optim.SparseAdam` on
`nn.EmbeddingBag(sparse=True)` for LazyAdam. The timing protocol is
`fused_step`'s (alternating rounds, best round's median per case).
"""

from __future__ import annotations

import numpy as np

from benchmarks import fused_step, peer, results

NAME = "bag_step"
OPTIMIZERS = list(peer.PEERS)  # the rules the peer has: sgd, adagrad, rowwise_adagrad, lazy_adam
FULL = dict(rows=1_000_000, dim=32, batch=1024, features=26, mean_bag=10, warmup=3, steps=15, rounds=2, threads=2)
QUICK = dict(rows=100_000, dim=32, batch=256, features=26, mean_bag=10, warmup=2, steps=4, rounds=1, threads=2)


def bag_batches(rows: int, batch: int, features: int, mean_bag: int, count: int = 4) -> list[tuple[np.ndarray,
                                                                                                 np.ndarray]]:
    """`count` batches of `batch * features` bags: `(ids [N] int64, row_splits [batch * features + 1] int64)`.

    Bag lengths are uniform on 0..2*mean_bag (empty bags included), ids Zipf
    as `step_time.zipf_ids`; the same in every process (seeds 0..count-1).
    Bag `b * features + f` is example b's feature f.
    """
    from benchmarks.step_time import zipf_ids

    out = []
    for seed in range(count):
        lengths = np.random.default_rng(1000 + seed).integers(0, 2 * mean_bag + 1, batch * features)
        splits = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        out.append((zipf_ids(rows, (int(splits[-1]),), seed=seed), splits))
    return out


def run(quick: bool, repeats: int | None = None, progress=None) -> dict:
    cfg = QUICK if quick else FULL
    steps = repeats or cfg["steps"]
    data = bag_batches(cfg["rows"], cfg["batch"], cfg["features"], cfg["mean_bag"])
    ids_per_step = float(np.mean([len(ids) for ids, _ in data]))
    unique = float(np.mean([len(np.unique(ids)) for ids, _ in data]))
    shape = dict(rows=cfg["rows"], dim=cfg["dim"], batch=cfg["batch"], features=cfg["features"],
                 mean_bag=cfg["mean_bag"], warmup=cfg["warmup"], steps=steps, threads=cfg["threads"])
    base = dict(rows=cfg["rows"], dim=cfg["dim"], batch=cfg["batch"], features=cfg["features"],
                mean_bag=cfg["mean_bag"], ids_per_step=ids_per_step, unique_rows_per_batch=unique,
                threads=cfg["threads"])
    best, notes, kernel_status = fused_step.measure_rounds(shape, OPTIMIZERS, cfg["rounds"], progress, NAME)
    measurements = []
    for key, case in best.items():
        optimizer, path = key.split(":")
        params = dict(base, optimizer=optimizer, path=path, best_round=case["round"],
                      implementation=case.get("peer") or case.get("apply_path"))
        measurements.append(results.measurement(params, case["repeats_s"]))
    median = {(m["params"]["optimizer"], m["params"]["path"]): m["median_s"] for m in measurements}
    ratios, goals = {}, []
    for name in OPTIMIZERS:
        if (name, "fused") in median and (name, "tf_ops") in median:
            ratios[f"{name}: tf_ops / fused"] = median[(name, "tf_ops")] / median[(name, "fused")]
        if (name, "fused") in median and (name, "peer") in median:
            ratio = median[(name, "fused")] / median[(name, "peer")]
            ratios[f"{name}: fused / peer ({peer.PEERS[name]})"] = ratio
            goals.append(results.goal(f"bag_step: {name} step / TorchRec's ({peer.PEERS[name]})", "<= 1.0", ratio,
                                      ratio <= 1.0, f"{ids_per_step:,.0f} ids per step in "
                                      f"{cfg['batch'] * cfg['features']:,} bags"
                                      + (results.quick_note(f"{cfg['rows']:,} rows, batch {cfg['batch']}",
                                                            "1M rows, batch 1024") if quick else ""),
                                      full_run_only=quick))
    notes.append(f"kernels: {kernel_status}")
    return results.benchmark(__doc__.splitlines()[0], measurements, ratios, goals, notes)
