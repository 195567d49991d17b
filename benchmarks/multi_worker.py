"""Item 7: two local workers under MultiWorkerMirroredStrategy, 100k vs 1M rows.

Two processes on localhost ports (`TF_CONFIG`, worker 0 the chief) train the
item-1 model (`SparseEmbedding` + `LazyAdam`, batch 4096 x 26 Zipf ids split
2048 per worker) in a custom loop with `strategy.run`. The optimizer
all-reduces the embedding gradient as `tf.IndexedSlices` (gathered slices,
not a dense table), so the step time should not grow with the table. Both
table sizes are measured in the same pair of processes, one after the other.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from benchmarks import harness, results, step_time
from components.trainer.local_workers import free_ports

NAME = "multi_worker"
FULL = dict(rows=[100_000, 1_000_000], dim=32, global_batch=4096, warmup=3, steps=20)
QUICK = dict(rows=[10_000, 100_000], dim=32, global_batch=512, warmup=2, steps=4)


def worker(rows, dim, global_batch, warmup, steps) -> dict:
    """Child process body for one worker (TF_CONFIG set by the parent)."""
    import keras
    import tensorflow as tf

    import optimizers

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    local_batch = global_batch // strategy.num_replicas_in_sync
    out = {"num_replicas": strategy.num_replicas_in_sync, "cases": []}
    for n_rows in rows:
        with strategy.scope():
            embedding = optimizers.SparseEmbedding(n_rows, dim, validate_ids=False)
            head = keras.layers.Dense(1)
            embedding.build((None, None))
            head.build((None, dim))
            variables = embedding.trainable_variables + head.trainable_variables
            opt = optimizers.LazyAdam(1e-3)
            opt.build(variables)
        batches, unique = step_time.make_batches(n_rows, local_batch, 26, count=4)
        traced = {}

        def replica_step(ids, labels):
            with tf.GradientTape() as tape:
                logits = tf.squeeze(head(tf.reduce_sum(embedding(ids), axis=1)), -1)
                per_example = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            grads = tape.gradient(loss, variables)
            traced["embedding_gradient"] = type(grads[0]).__name__
            opt.apply_gradients(zip(grads, variables))
            return loss

        @tf.function
        def train_step(ids, labels):
            return strategy.reduce("SUM", strategy.run(replica_step, args=(ids, labels)), axis=None)

        # Each worker feeds its own shard: offset the seed by the worker index.
        times = harness.time_calls(lambda i: train_step(*batches[(i + index) % len(batches)]).numpy(), warmup, steps)
        out["cases"].append({"rows": n_rows, "repeats_s": times, "unique_rows_per_worker_batch": unique,
                             "embedding_gradient": traced.get("embedding_gradient")})
    return out


def launch(kwargs: dict, num_workers: int = 2, timeout: float = 900,
           target: str = f"{__name__}:worker") -> list[dict]:
    """Runs `target(**kwargs)` ("module:function", this module's `worker` by default) in `num_workers`
    processes under one TF_CONFIG cluster."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(num_workers)]}
    with tempfile.TemporaryDirectory(prefix="embedopt-bench-mw-") as tmp:
        procs, outs = [], []
        for i in range(num_workers):
            out = os.path.join(tmp, f"worker-{i}.json")
            env = {**os.environ, **harness.CHILD_ENV,
                   "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
            procs.append(subprocess.Popen([sys.executable, "-m", "benchmarks._child", target,
                                           json.dumps(kwargs), out], env=env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE, text=True))
            outs.append(out)
        errors = []
        for i, proc in enumerate(procs):
            try:
                _, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                for p in procs:
                    p.kill()
                raise harness.ChildError(f"multi-worker benchmark: worker {i} ran past {timeout} s") from None
            if proc.returncode != 0:
                errors.append(f"worker {i} exited with {proc.returncode}:\n{err[-2000:]}")
        if errors:
            raise harness.ChildError("\n".join(errors))
        reports = []
        for out in outs:
            with open(out, encoding="utf-8") as f:
                reports.append(json.load(f))
        return reports


def run(quick: bool, repeats: int | None = None, progress=None) -> dict:
    cfg = dict(QUICK if quick else FULL)
    if repeats:
        cfg["steps"] = repeats
    reports = launch(cfg)
    chief = reports[0]
    measurements = [results.measurement(
        dict(rows=case["rows"], dim=cfg["dim"], global_batch=cfg["global_batch"], workers=len(reports),
             optimizer="lazy_adam", strategy="MultiWorkerMirroredStrategy"),
        case["repeats_s"], unique_rows_per_worker_batch=case["unique_rows_per_worker_batch"],
        embedding_gradient=case["embedding_gradient"], peak_rss_bytes=chief["peak_rss_bytes"])
        for case in chief["cases"]]
    small, large = measurements[0], measurements[-1]
    label = f"{step_time.size_label(large['params']['rows'])}/{step_time.size_label(small['params']['rows'])}"
    ratio = large["median_s"] / small["median_s"]
    note = results.quick_note(f"{label} rows, where the table stays in the CPU caches",
                              f"{step_time.size_label(FULL['rows'][-1])}/{step_time.size_label(FULL['rows'][0])} rows"
                              ) if quick else ""
    goals = [results.goal(f"multi_worker: 2-worker step @{label}", "<= 1.5", ratio, ratio <= 1.5, note,
                          full_run_only=quick)]
    notes = [f"{chief['num_replicas']} replicas; embedding gradient in the replica step: "
             f"{small['embedding_gradient']} (all-reduced by the optimizer as gathered slices). Both workers share "
             f"this machine's {os.cpu_count()} cores."]
    return results.benchmark(__doc__.splitlines()[0], measurements, {f"2-worker step {label}": ratio}, goals, notes)
