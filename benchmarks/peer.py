"""The peer in the fused-kernel benchmark: TorchRec's fbgemm CPU kernels, on the same step and the same ids.

One step = a sum-pooled lookup of `batch x ids_per_example` ids in one
`rows x dim` float32 table, a linear head, binary cross-entropy, backward and
the optimizer's apply, as `benchmarks.fused_step` times ours. fbgemm's
`SplitTableBatchedEmbeddingBagsCodegen` (the kernel behind TorchRec's
`EmbeddingBagCollection`) on the HOST, CPU compute device, fuses the apply
into the backward for SGD, Adagrad and row-wise Adagrad; fbgemm has no CPU
Adam, so Adam's peer is `torch.optim.SparseAdam` on `nn.EmbeddingBag(sparse=True)`.
The head uses plain `torch.optim.SGD`.

Needs the `torchrec` extra (`pip install '.[torchrec]'`: torch and
fbgemm-gpu-cpu); `available()` says whether it is there and, if not, why.
Nothing here imports TensorFlow: it runs in a child process of its own.
"""

from __future__ import annotations

import importlib.util

# Our optimizer name -> the peer that does the same update.
PEERS = {
    "sgd": "fbgemm EXACT_SGD",
    "adagrad": "fbgemm EXACT_ADAGRAD",
    "rowwise_adagrad": "fbgemm EXACT_ROWWISE_ADAGRAD",
    "lazy_adam": "torch.optim.SparseAdam",
}
INSTALL_HINT = "pip install '.[torchrec]'  (torch 2.14.1 and fbgemm-gpu-cpu 1.9.0, about 5.5 GB)"


def available() -> tuple[bool, str]:
    """(whether torch and fbgemm's CPU kernels import, why not)."""
    for module in ("torch", "fbgemm_gpu"):
        if importlib.util.find_spec(module) is None:
            return False, f"{module} is not installed; for the side-by-side with TorchRec's kernels: {INSTALL_HINT}"
    try:
        import fbgemm_gpu  # noqa: F401
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import SplitTableBatchedEmbeddingBagsCodegen  # noqa: F401
    except Exception as err:  # noqa: BLE001 - e.g. the CUDA fbgemm_gpu without CUDA
        first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        return False, (f"fbgemm_gpu does not load ({first}); the CUDA build may have replaced the CPU one: "
                       "pip uninstall -y fbgemm-gpu && pip install --no-deps fbgemm-gpu-cpu==1.9.0")
    return True, ""


def _tbe(rows: int, dim: int, optimizer: str, learning_rate: float):
    from fbgemm_gpu.split_embedding_configs import EmbOptimType as OptimType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (ComputeDevice,
                                                                          SplitTableBatchedEmbeddingBagsCodegen)

    optim = {"sgd": OptimType.EXACT_SGD, "adagrad": OptimType.EXACT_ADAGRAD,
             "rowwise_adagrad": OptimType.EXACT_ROWWISE_ADAGRAD}[optimizer]
    return SplitTableBatchedEmbeddingBagsCodegen(
        [(rows, dim, EmbeddingLocation.HOST, ComputeDevice.CPU)], optimizer=optim, learning_rate=learning_rate,
        eps=1e-7, pooling_mode=PoolingMode.SUM)


def measure(rows: int, dim: int, optimizers: list[str], batch: int, warmup: int, steps: int, threads: int,
            ids_per_example: int | None = None, features: int | None = None, mean_bag: int | None = None,
            learning_rate: float = 1e-3) -> dict:
    """Child process body: seconds per step for each optimizer's peer, on the ids ours use
    (`step_time.zipf_batches`, or `bag_step.bag_batches` when `features` is given)."""
    import time

    import torch

    from benchmarks.step_time import zipf_batches

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if features:
        from benchmarks.bag_step import bag_batches

        data = [(torch.from_numpy(flat), torch.from_numpy(splits))
                for flat, splits in bag_batches(rows, batch, features, mean_bag)]
    else:
        data = []
        for b in zipf_batches(rows, batch, ids_per_example):
            data.append((torch.from_numpy(b.reshape(-1)),
                         torch.arange(0, b.size + 1, ids_per_example, dtype=torch.int64)))
    ids = [flat for flat, _ in data]
    offsets_of = [splits for _, splits in data]
    head_width = dim * (features or 1)
    labels = [torch.randint(0, 2, (batch,), generator=torch.Generator().manual_seed(100 + i)).float()
              for i in range(len(ids))]
    out = {}
    for optimizer in optimizers:
        head = torch.nn.Linear(head_width, 1)
        head_opt = torch.optim.SGD(head.parameters(), lr=learning_rate)
        if optimizer == "lazy_adam":
            bag = torch.nn.EmbeddingBag(rows, dim, mode="sum", sparse=True)
            table_opt = torch.optim.SparseAdam(bag.parameters(), lr=learning_rate)

            def lookup(i):
                return bag(ids[i], offsets_of[i][:-1])
        else:
            tbe, table_opt = _tbe(rows, dim, optimizer, learning_rate), None

            def lookup(i):
                return tbe(ids[i], offsets_of[i])

        def step(i):
            i %= len(ids)
            pooled = lookup(i).reshape(batch, head_width)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(head(pooled).squeeze(-1), labels[i])
            head_opt.zero_grad()
            if table_opt is not None:
                table_opt.zero_grad()
            loss.backward()  # fbgemm applies its rule to the table inside the backward
            head_opt.step()
            if table_opt is not None:
                table_opt.step()
            return float(loss.detach())

        for i in range(warmup):
            step(i)
        times = []
        for i in range(steps):
            start = time.perf_counter()
            step(warmup + i)
            times.append(time.perf_counter() - start)
        out[optimizer] = {"peer": PEERS[optimizer], "repeats_s": times}
    return {"cases": out, "torch": torch.__version__, "threads": threads}
