"""One worker of the multi-worker DynamicEmbedding test (a subprocess, N of them).

Usage: TF_CONFIG=... python -m tests.optimizers.dynamic_worker OUT_DIR EVICTION [sharded]

Trains `test_dynamic_embedding`'s replicated stream under
MultiWorkerMirroredStrategy, each worker on its slice of every global batch,
with a `DynamicEmbedding` (every worker the whole table) or, with `sharded`,
a `ShardedDynamicEmbedding` (each worker its own keys), and saves this
worker's table state, rows and LazyAdam slots to
OUT_DIR/<eviction>[-sharded]-worker<i>.npz.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def main(out_dir: str, eviction: str, kind: str = "") -> None:
    from tests.optimizers.test_dynamic_embedding import replicated_stream, _replicated_run
    from tests.optimizers.test_dynamic_sharded import sharded_run

    task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    strategy = tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING))
    batches, coefs = replicated_stream()
    run = sharded_run if kind == "sharded" else _replicated_run
    layer, optimizer = run(strategy, batches, coefs, eviction)
    keys, rows = (t.numpy() for t in layer.key_to_row.export())
    arrays = {"counters": np.array([layer.counters()[k] for k in sorted(layer.counters())]),
              "hash_keys": keys, "hash_rows": rows}
    for i, variable in enumerate(layer.weights):
        arrays[f"var{i}"] = strategy.experimental_local_results(variable.value)[0].numpy()
    for name in ("m", "v"):
        slot = optimizer.get_slot(layer.embeddings, name)
        arrays["slot:" + name] = strategy.experimental_local_results(slot.value)[0].numpy()
    arrays["bytes_sent"] = np.array(getattr(layer, "bytes_sent", 0))
    np.savez(os.path.join(out_dir, f"{eviction}{'-' + kind if kind else ''}-worker{task}.npz"), **arrays)


if __name__ == "__main__":
    main(*sys.argv[1:])
