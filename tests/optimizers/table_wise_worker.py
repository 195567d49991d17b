"""One worker of the table_wise test (a subprocess, N of them): `sharded_worker`'s model with a `TableWiseEmbedding`.

Usage: TF_CONFIG=... python -m tests.optimizers.table_wise_worker OUT_DIR OWNER CASE [CASE ...]

For each case and exchange it trains `sharded_worker.train`'s tiny model with
the whole table on worker OWNER and saves the arrays to
OUT_DIR/<case>-<exchange>-worker<i>.npz.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import optimizers  # noqa: E402
from tests.optimizers.sharded_worker import run_cases, train  # noqa: E402


def main(out_dir, owner, cases):
    run_cases(out_dir, cases, train, optimizers.TableWiseEmbedding, owner=owner)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
