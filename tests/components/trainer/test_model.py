"""The DLRM's first-order (wide) term: one extra table column, added to the logit as it is."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from components.trainer.model import DLRM

KEYS = ("cat_0", "cat_1", "cat_2")
SIZES = (5, 7, 3)
DIM = 4


def _model(wide: bool, layout: str = "per_feature") -> DLRM:
    model = DLRM(SIZES, KEYS, "dense", embedding_dim=DIM, table_layout=layout, bottom_mlp=(6,), top_mlp=(6,), wide=wide)
    model(_features([[0, 0, 0]]))
    return model


def _features(ids):
    ids = np.asarray(ids, dtype=np.int64)
    features = {"dense": tf.constant(np.linspace(0, 1, len(ids) * 2).reshape(len(ids), 2), tf.float32)}
    features.update({key: tf.constant(ids[:, i]) for i, key in enumerate(KEYS)})
    return features


@pytest.mark.parametrize("wide,width", [(True, DIM + 1), (False, DIM)])
def test_table_width_is_embedding_dim_plus_the_wide_column(wide, width):
    assert [tuple(v.shape) for v in _model(wide).embedding_variables()] == [(s, width) for s in SIZES]


@pytest.mark.parametrize("layout", ["per_feature", "shared"])
def test_wide_weights_add_to_the_logit_and_leave_the_interaction_alone(layout):
    model = _model(True, layout)
    ids = [[1, 2, 0], [4, 6, 2]]
    before = model(_features(ids)).numpy()
    # Add a first-order weight to value 2 of cat_1 (row offset 5 + 2 in the shared table).
    table, row = (model.tables[0], 5 + 2) if layout == "shared" else (model.tables[1], 2)
    table.embeddings.assign(tf.tensor_scatter_nd_add(table.embeddings, [[row, DIM]], [0.75]))
    after = model(_features(ids)).numpy()
    np.testing.assert_allclose(after - before, [0.75, 0.0], atol=1e-6)
