"""A sparse step never touches the whole table (lazy rules).

The traced graph of one training step on a table with a distinctive row
count must hold no tensor with that many rows: no dense gradient, no read of
the whole variable, no full-size slot update. Adam's exact path and Keras's
`Embedding` must show such tensors, which shows the check can fail.
"""

from __future__ import annotations

import keras
import pytest
import tensorflow as tf

import optimizers
from tests.optimizers.cases import CASES
from tests.optimizers.helpers import make

TABLE_ROWS = 100_003  # a row count no other tensor in the step has


def all_graphs(graph):
    """The graph and, recursively, the branch/body graphs of its functions."""
    graphs = [graph]
    for function in graph._functions.values():
        if hasattr(function, "graph"):
            graphs += all_graphs(function.graph)
    return graphs


def table_sized_tensors(make_layer, make_opt, strategy=None):
    """Names of the ops in one traced training step that output a table-sized tensor."""
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        layer, opt = make_layer(), make_opt()
        layer.build((None, 3))
        opt.build(layer.trainable_variables)

    def replica_step(ids):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(layer(ids)))
        grads = tape.gradient(loss, layer.trainable_variables)
        opt.apply_gradients(zip(grads, layer.trainable_variables))

    @tf.function
    def step(ids):
        strategy.run(replica_step, args=(ids,))

    graph = step.get_concrete_function(tf.TensorSpec([None, 3], tf.int64)).graph
    return [
        f"{op.type}:{op.name}"
        for g in all_graphs(graph)
        for op in g.get_operations()
        for out in op.outputs
        if out.dtype != tf.resource and out.shape.rank and out.shape[0] == TABLE_ROWS
    ]


@pytest.mark.parametrize("case", [c for c in CASES if c.name != "adam"], ids=str)
@pytest.mark.parametrize("clip", [{}, {"clipnorm": 1.0}, {"global_clipnorm": 1.0}, {"clipvalue": 0.5}])
def test_sparse_step_never_materializes_the_table(case, clip):
    assert table_sized_tensors(sparse_embedding, lambda: make(case, **clip)) == []


@pytest.mark.parametrize("case", [c for c in CASES if c.name in ("lazy_adam", "rowwise_adagrad", "ftrl")], ids=str)
def test_mirrored_sparse_step_never_materializes_the_table(case, mirrored_strategy):
    # `tf.gather` on a distributed variable would read the whole table.
    assert table_sized_tensors(sparse_embedding, lambda: make(case), mirrored_strategy) == []


def test_check_sees_adams_exact_full_table_pass():
    assert table_sized_tensors(sparse_embedding, optimizers.Adam) != []


def test_check_sees_keras_embedding_full_table_read():
    assert table_sized_tensors(lambda: keras.layers.Embedding(TABLE_ROWS, 4), keras.optimizers.SGD) != []


def sparse_embedding():
    return optimizers.SparseEmbedding(TABLE_ROWS, 4)
