"""Prints a digest of every kernel's output, run with N intra-op threads.

`python -m tests.optimizers.kernels.determinism_worker N`: the digests for
1 and 2 threads must be equal; each op runs twice here and must give the
same bits both times (exit status 1 otherwise).
"""

import hashlib
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.threading.set_intra_op_parallelism_threads(int(sys.argv[1]))

from optimizers.kernels import ops as kops  # noqa: E402

ROWS, WIDTH, IDS, BAGS = 5000, 16, 200_000, 4000  # > 65536 ids: the sort runs in chunks


def outputs():
    """Every op on a large Zipf batch, big enough to be split over threads."""
    rng = np.random.default_rng(7)
    ids = tf.constant((rng.zipf(1.1, IDS) - 1) % ROWS, tf.int64)
    values = tf.constant(rng.standard_normal((IDS, WIDTH)), tf.float32)
    splits = tf.constant(np.sort(rng.integers(0, IDS, BAGS - 1)), tf.int64)
    splits = tf.concat([[0], splits, [IDS]], axis=0)
    weights = tf.constant(rng.random(IDS), tf.float32)
    table = tf.Variable(rng.standard_normal((ROWS, WIDTH)).astype(np.float32))
    slots = [tf.Variable(tf.zeros([ROWS, WIDTH])), tf.Variable(tf.zeros([ROWS, WIDTH]))]
    results = list(kops.dedup(ids, values))
    results.append(kops.pooled_lookup(table, ids, splits, weights, combiner="sqrtn"))
    upstream = tf.constant(rng.standard_normal((BAGS, WIDTH)), tf.float32)
    results += kops.pooled_lookup_grad(upstream, ids, splits, weights, ROWS, combiner="mean")
    kops.sparse_apply(table, slots, ids, values, "adam", [0.01, 0.9, 0.999, 1e-7, 0.0])
    results += [table.read_value()] + [s.read_value() for s in slots]
    return [r.numpy().tobytes() for r in results]


def main():
    first, second = outputs(), outputs()
    if first != second:
        print("two runs in one process differ", file=sys.stderr)
        return 1
    print(hashlib.sha256(b"".join(first)).hexdigest())
    return 0


if __name__ == "__main__":
    sys.exit(main())
