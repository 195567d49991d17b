"""A DynamicEmbedding checkpoint written by the first cut (key -> row map saved as a `MutableHashTable`) restores
to the same state, and training on from it gives the state the first cut reached (tests/fixtures/dynamic_checkpoint_v1,
made by tests/fixtures/make_dynamic_checkpoint.py at commit f0c75ce)."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import tensorflow as tf

from optimizers import fast_path
from optimizers import kernels as kernel_library
from tests.fixtures import make_dynamic_checkpoint as fixture


@pytest.mark.parametrize("kernels", ["on", "off"])
def test_first_cut_checkpoint_restores_and_trains_on(kernels):
    keys, coefs = fixture.batches()
    with fast_path.disabled() if kernels == "off" else contextlib.nullcontext():
        pairs = fixture.make_layers()
        fixture.train(pairs, keys[:3], coefs[:3])  # some other state, which the restore overwrites
        fixture.checkpoint(pairs).read(str(fixture.OUT / "ckpt")).assert_consumed()
        for name, stage in (("restored", slice(0, 0)), ("continued", slice(8, 16))):
            fixture.train(pairs, keys[stage], coefs[stage])
            expected = np.load(fixture.OUT / f"{name}.npz")
            got = fixture.snapshot(pairs)
            assert list(got) == list(expected)
            for path in expected:
                fused = kernels == "on" and kernel_library.load() is not None
                if not fused and name == "continued" and expected[path].dtype.kind == "f":
                    # The fixture's optimizer steps ran the fused kernels: the TF ops round differently.
                    np.testing.assert_allclose(got[path], expected[path], rtol=1e-5, atol=1e-6, err_msg=path)
                else:
                    np.testing.assert_array_equal(got[path], expected[path], err_msg=f"{name}: {path}")
    assert int(expected["0/layer/lru_table/evictions"]) > 0 and int(expected["1/layer/lfu_table/evictions"]) > 0
