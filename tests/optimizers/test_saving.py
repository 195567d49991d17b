"""A model saved to `.keras` with its optimizer loads back and trains on identically."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import optimizers
from tests.optimizers.cases import CASES
from tests.optimizers.helpers import make


def build_model(opt):
    model = keras.Sequential([
        keras.Input((4,), dtype="int64"),
        optimizers.SparseEmbedding(40, 3, name="table"),
        keras.layers.Flatten(),
        keras.layers.Dense(1, activation="sigmoid"),
    ])
    model.compile(optimizer=opt, loss="binary_crossentropy")
    return model


@pytest.mark.parametrize("case", CASES, ids=str)
def test_keras_save_load_continue(case, tmp_path):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 40, size=(64, 4))
    y = (x[:, 0] < 20).astype("float32")
    model = build_model(make(case, learning_rate=0.05))
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)

    assert type(loaded.optimizer) is type(model.optimizer)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert len(loaded.optimizer.variables) == len(model.optimizer.variables)
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)

    model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    loaded.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7, err_msg=a.path)
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7, err_msg=a.path)
