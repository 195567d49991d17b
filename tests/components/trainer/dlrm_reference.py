"""An independent NumPy DLRM (forward and the tables' gradient) for the model tests; imports nothing of embedopt.

The weights come in as plain arrays: `tables` (one `[rows, d + wide]` array
per table), `offsets` (each feature's first row in its table), `bottom`,
`top` and `head` (lists of `(kernel, bias)`), `cross` (per layer a list of
kernel matrices and a bias). Ids come as one Python list of bags per
feature: `bags[f][b]` is example b's ids of feature f (a one-hot id is a bag
of one).
"""

from __future__ import annotations

import numpy as np


def pool_weights(bag: list[int], combiner: str) -> float:
    """The factor each id of `bag` gets: 1 (sum), 1/len (mean), 1/sqrt(len) (sqrtn)."""
    if not bag or combiner == "sum":
        return 1.0
    return 1.0 / len(bag) if combiner == "mean" else 1.0 / np.sqrt(len(bag))


def pooled(table: np.ndarray, offset: int, bags: list[list[int]], combiner: str) -> np.ndarray:
    """`[B, width]`: each bag's rows summed and scaled; zeros for an empty bag."""
    out = np.zeros((len(bags), table.shape[1]), np.float64)
    for b, bag in enumerate(bags):
        for i in bag:
            out[b] += table[offset + i]
        out[b] *= pool_weights(bag, combiner)
    return out


def relu_mlp(x, layers, last_relu=True):
    """Dense layers with ReLU; returns the output and each layer's pre-activation (for the backward pass)."""
    pre = []
    for n, (kernel, bias) in enumerate(layers):
        z = x @ kernel + bias
        pre.append((x, z))
        x = np.maximum(z, 0.0) if last_relu or n < len(layers) - 1 else z
    return x, pre


def cross_network(x0, cross):
    """DCN-v2: x_{l+1} = x0 * (x_l @ W_l + b_l) + x_l, W_l the product of the layer's kernel matrices."""
    x = x0
    for kernels, bias in cross:
        projected = x
        for matrix in kernels:
            projected = projected @ matrix
        x = x0 * (projected + bias) + x
    return x


def forward(w, bags, dense, dim, combiner, interaction, wide=True):
    """Logits `[B]` and what `table_gradients` needs."""
    x, _ = relu_mlp(np.asarray(dense, np.float64), w["bottom"])
    rows = [pooled(w["tables"][t], w["offsets"][f], bags[f], combiner) for f, t in enumerate(w["table_of"])]
    vectors = np.stack([x] + [r[:, :dim] for r in rows], axis=1)  # [B, F + 1, d]
    if interaction == "dot":
        products = np.einsum("bid,bjd->bij", vectors, vectors)
        i, j = np.triu_indices(vectors.shape[1], k=1)
        z = np.concatenate([x, products[:, i, j]], axis=1)
    else:
        z = vectors.reshape(len(x), -1)
        if interaction == "dcnv2":
            z = cross_network(z, w["cross"])
    top, pre = relu_mlp(z, w["top"])
    logits = (top @ w["head"][0] + w["head"][1])[:, 0]
    if wide:
        logits = logits + sum(r[:, dim] for r in rows)
    return logits, (z, pre)


def table_gradients(w, bags, dense, dim, combiner, upstream, wide=True):
    """Dense gradients of `sum(upstream * logits)` for each table, for the "concat" interaction.

    Back through the head and the top MLP to z = [x0, e_0, ...], then each
    feature's slice of dz to every id of its bags, scaled as in the pooling.
    """
    logits, (z, pre) = forward(w, bags, dense, dim, combiner, "concat", wide)
    del logits
    grad = upstream[:, None] * w["head"][0][:, 0][None, :]  # d/d(top output)
    for (_, pre_activation), (kernel, _) in zip(reversed(pre), reversed(w["top"])):
        grad = (grad * (pre_activation > 0)) @ kernel.T
    dz = grad.reshape(len(z), len(bags) + 1, dim)
    grads = [np.zeros_like(t, np.float64) for t in w["tables"]]
    for f, t in enumerate(w["table_of"]):
        for b, bag in enumerate(bags[f]):
            scale = pool_weights(bag, combiner)
            for i in bag:
                grads[t][w["offsets"][f] + i, :dim] += scale * dz[b, f + 1]
                if wide:
                    grads[t][w["offsets"][f] + i, dim] += scale * upstream[b]
    return grads
