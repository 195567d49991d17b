"""Issue 19: one training step with the fused CPU kernels, the TF-ops path and TorchRec's fbgemm kernels.

One step = a sum-pooled lookup of `batch x ids_per_example` Zipf ids in one
`rows x dim` float32 table, a linear head, binary cross-entropy, backward and
the optimizer's apply to the table and the head, in one `tf.function`. Ours
is `SparseEmbedding(combiner="sum")` + an embedopt optimizer, timed with the
kernels and with `optimizers.fast_path.disabled()` (the TF-ops path) in the
same child process; the peer (`benchmarks.peer`: fbgemm's
`SplitTableBatchedEmbeddingBagsCodegen` for SGD, Adagrad and row-wise
Adagrad, `torch.optim.SparseAdam` for LazyAdam) runs the same ids in a child
of its own. Both sides use `threads` intra-op threads. The rounds alternate
ours and the peer; each case keeps its best round's median.
"""

from __future__ import annotations

import os

import numpy as np

from benchmarks import harness, peer, results
from benchmarks.step_time import zipf_batches

NAME = "fused_step"
OPTIMIZERS = ["sgd", "momentum", "decaying_sgd", "adagrad", "rowwise_adagrad", "lazy_adam", "adamw", "ftrl"]
FULL = dict(rows=1_000_000, dim=32, batch=4096, ids_per_example=26, warmup=5, steps=20, rounds=2, threads=2)
QUICK = dict(rows=100_000, dim=32, batch=1024, ids_per_example=26, warmup=2, steps=5, rounds=1, threads=2)
# The peer's interpreter, when torch lives in another environment than TensorFlow (the [torchrec] extra is ~5.5 GB).
PEER_PYTHON_ENV = "EMBEDOPT_BENCH_PEER_PYTHON"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure_ours(rows, dim, optimizers, batch, warmup, steps, threads, ids_per_example=None, features=None,
                 mean_bag=None, learning_rate=1e-3) -> dict:
    """Child process body: per optimizer, seconds per step on the fused and on the TF-ops path.

    Each example is one bag of `ids_per_example` ids, or (`bag_step`) `features` ragged bags of `mean_bag` ids on
    average whose pooled rows are concatenated.
    """
    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    import optimizers as embedopt
    from optimizers import fast_path, kernels

    if features:
        from benchmarks.bag_step import bag_batches

        ids = [tf.RaggedTensor.from_row_splits(tf.constant(flat), tf.constant(splits))
               for flat, splits in bag_batches(rows, batch, features, mean_bag)]
    else:
        ids = [tf.constant(b, tf.int64) for b in zipf_batches(rows, batch, ids_per_example)]
    head_width = dim * (features or 1)
    labels = [tf.constant(np.random.default_rng(100 + i).integers(0, 2, batch).astype(np.float32))
              for i in range(len(ids))]
    out = {}
    for name in optimizers:
        for path in ("fused", "tf_ops"):
            keras.utils.set_random_seed(0)
            table = embedopt.SparseEmbedding(rows, dim, combiner="sum", validate_ids=False)
            head = keras.layers.Dense(1)
            table.build()
            head.build((None, head_width))
            variables = table.trainable_variables + head.trainable_variables
            opt = embedopt.get(name, learning_rate=learning_rate)
            opt.build(variables)
            scope = fast_path.disabled() if path == "tf_ops" else _nothing()
            with scope:
                @tf.function
                def step(x, y):
                    with tf.GradientTape() as tape:
                        logits = tf.squeeze(head(tf.reshape(table(x), [batch, head_width])), -1)
                        loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=logits))
                    opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
                    return loss

                times = harness.time_calls(lambda i: step(ids[i % len(ids)], labels[i % len(ids)]).numpy(),
                                           warmup, steps)
                apply_path = opt.apply_path(table.embeddings.value)
            out[f"{name}:{path}"] = {"repeats_s": times, "apply_path": apply_path}
    return {"cases": out, "kernels": kernels.status()[1]}


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _peer_python() -> str | None:
    return os.environ.get(PEER_PYTHON_ENV) or None


def _peer_available() -> tuple[bool, str]:
    python = _peer_python()
    if python is None:
        return peer.available()
    import subprocess

    check = subprocess.run([python, "-c", "from benchmarks import peer; ok, why = peer.available(); print(ok); "
                            "print(why)"], capture_output=True, text=True, cwd=REPO_ROOT,
                           env={**os.environ, "PYTHONPATH": REPO_ROOT})
    lines = check.stdout.splitlines()
    if check.returncode or not lines:
        return False, f"{PEER_PYTHON_ENV}={python} cannot run the peer: {check.stderr.strip()[-300:]}"
    return lines[0] == "True", "\n".join(lines[1:])


def run(quick: bool, repeats: int | None = None, progress=None) -> dict:
    cfg = QUICK if quick else FULL
    steps = repeats or cfg["steps"]
    unique = float(np.mean([len(np.unique(b)) for b in zipf_batches(cfg["rows"], cfg["batch"], cfg["ids_per_example"])]))
    shape = dict(rows=cfg["rows"], dim=cfg["dim"], batch=cfg["batch"], ids_per_example=cfg["ids_per_example"],
                 warmup=cfg["warmup"], steps=steps, threads=cfg["threads"])
    best, notes, kernel_status = measure_rounds(shape, OPTIMIZERS, cfg["rounds"], progress, NAME)
    base = dict(rows=cfg["rows"], dim=cfg["dim"], batch=cfg["batch"], ids_per_example=cfg["ids_per_example"],
                threads=cfg["threads"], unique_rows_per_batch=unique)
    measurements = []
    for key, case in best.items():
        optimizer, path = key.split(":")
        params = dict(base, optimizer=optimizer, path=path, best_round=case["round"])
        params["implementation"] = case.get("peer") or case.get("apply_path")
        measurements.append(results.measurement(params, case["repeats_s"]))
    return _summary(cfg, quick, measurements, notes, kernel_status)


def measure_rounds(shape: dict, optimizers: list[str], rounds: int, progress, name: str):
    """Alternates our child and the peer's `rounds` times on `shape`; keeps each case's best round.

    Returns `({"<optimizer>:<fused|tf_ops|peer>": case}, notes, kernel status)`.
    """
    peer_ok, peer_why = _peer_available()
    notes = [] if peer_ok else [f"peer not measured: {peer_why}"]
    best: dict[str, dict] = {}
    kernel_status = ""
    for round_ in range(rounds):
        child = harness.run_child(f"{__name__}:measure_ours", dict(shape, optimizers=optimizers))
        kernel_status = child.get("kernels", "")
        cases = {key: dict(value, side="ours") for key, value in child["cases"].items()}
        if peer_ok:
            peer_child = harness.run_child("benchmarks.peer:measure",
                                           dict(shape, optimizers=[o for o in optimizers if o in peer.PEERS]),
                                           python=_peer_python(), env={"PYTHONPATH": REPO_ROOT})
            cases.update({f"{key}:peer": dict(value, side="peer") for key, value in peer_child["cases"].items()})
        for key, case in cases.items():
            median = float(np.median(case["repeats_s"]))
            if key not in best or median < best[key]["median"]:
                best[key] = dict(case, median=median, round=round_)
        if progress:
            progress(f"{name} round {round_ + 1}/{rounds}")
    return best, notes, kernel_status


def _summary(cfg, quick, measurements, notes, kernel_status) -> dict:
    median = {(m["params"]["optimizer"], m["params"]["path"]): m["median_s"] for m in measurements}
    ratios, goals = {}, []
    for name in OPTIMIZERS:
        if (name, "fused") in median and (name, "tf_ops") in median:
            ratios[f"{name}: tf_ops / fused"] = median[(name, "tf_ops")] / median[(name, "fused")]
        if (name, "peer") in median and (name, "fused") in median:
            ratios[f"{name}: fused / peer ({peer.PEERS[name]})"] = median[(name, "fused")] / median[(name, "peer")]
    sgd_peer = median.get(("sgd", "peer"))
    fused = {name: median[(name, "fused")] for name in OPTIMIZERS if (name, "fused") in median}
    if sgd_peer and fused:
        worst = max(fused, key=fused.get)
        ratio = fused[worst] / sgd_peer
        note = (f"slowest fused step: {worst} {1000 * fused[worst]:.2f} ms; fbgemm SGD {1000 * sgd_peer:.2f} ms"
                + (results.quick_note(f"{cfg['rows']:,} rows, batch {cfg['batch']}", "1M rows, batch 4096")
                   if quick else ""))
        goals.append(results.goal("fused_step: every optimizer's step / fbgemm's SGD step", "<= 1.0", ratio,
                                  ratio <= 1.0, note, full_run_only=quick))
    notes.append(f"kernels: {kernel_status}")
    return results.benchmark(__doc__.splitlines()[0], measurements, ratios, goals, notes)
