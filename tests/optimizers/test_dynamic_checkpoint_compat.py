"""A DynamicEmbedding checkpoint written by the first cut (key -> row map saved as a `MutableHashTable`) restores
to the same state, and training on from it gives the state the first cut reached (tests/fixtures/dynamic_checkpoint_v1,
made by tests/fixtures/make_dynamic_checkpoint.py at commit f0c75ce).

The first cut's LFU table kept no `last_seen` and broke count ties by row alone: it restores with `last_seen` 0,
and trains on under today's rule (ties to the row seen least recently), which the NumPy reference checks in place
of the fixture's LFU state."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import tensorflow as tf

from optimizers import fast_path
from optimizers import kernels as kernel_library
from tests.fixtures import make_dynamic_checkpoint as fixture
from tests.optimizers.dynamic_reference import ReferenceTable

LFU = 1  # the LFU table's index in the fixture's pairs
LFU_PREFIX = f"{LFU}/layer/lfu_table/"


def _reference_from(layer) -> ReferenceTable:
    """The NumPy policy, started from `layer`'s state (as restored)."""
    ref = ReferenceTable(layer.capacity, admit_after=layer.admit_after, eviction=layer.eviction,
                         sketch_depth=layer.sketch_depth, sketch_width=layer.sketch_width)
    counters = layer.counters()
    used = counters["rows_in_use"]
    ref.key_of = dict(enumerate(layer.row_keys.numpy()[:used].tolist()))
    ref.row_of = {k: r for r, k in ref.key_of.items()}
    ref.stamp = layer.row_stamps.numpy().copy()
    ref.last_seen = layer.lfu_last_seen.numpy().copy()
    ref.sketch = layer.sketch.numpy().copy()
    ref.step = counters["steps"]
    ref.admissions, ref.evictions = counters["admissions"], counters["evictions"]
    ref.default_lookups, ref.lookups = counters["default_lookups"], counters["lookups"]
    return ref


@pytest.mark.parametrize("kernels", ["on", "off"])
def test_first_cut_checkpoint_restores_and_trains_on(kernels, tmp_path):
    keys, coefs = fixture.batches()
    with fast_path.disabled() if kernels == "off" else contextlib.nullcontext():
        pairs = fixture.make_layers()
        fixture.train(pairs, keys[:3], coefs[:3])  # some other state, which the restore overwrites
        fixture.checkpoint(pairs).read(str(fixture.OUT / "ckpt")).expect_partial()
        # Every value of the old checkpoint has its object still; the one object it has no value for is last_seen.
        written = fixture.checkpoint(pairs).write(str(tmp_path / "now"))
        old_names = {name for name, _ in tf.train.list_variables(str(fixture.OUT / "ckpt"))}
        new_names = {name for name, _ in tf.train.list_variables(written)}
        assert new_names - old_names == {f"layer{LFU}/lfu_last_seen/.ATTRIBUTES/VARIABLE_VALUE"}
        assert old_names - new_names == set()
        lfu_layer = pairs[LFU][0]
        np.testing.assert_array_equal(lfu_layer.lfu_last_seen.numpy(), 0)  # not the 3 steps' stamps
        ref = _reference_from(lfu_layer)
        evictions_at_restore = ref.evictions
        for name, stage in (("restored", slice(0, 0)), ("continued", slice(8, 16))):
            fixture.train(pairs, keys[stage], coefs[stage])
            for k in keys[stage]:
                ref.train(k)
            expected = np.load(fixture.OUT / f"{name}.npz")
            got = fixture.snapshot(pairs)
            assert set(got) - set(expected) == {LFU_PREFIX + "last_seen"}
            for path in expected:
                if name == "continued" and path.startswith(f"{LFU}/"):
                    continue  # the first cut's LFU tie order; the reference checks it below
                fused = kernels == "on" and kernel_library.load() is not None
                if not fused and name == "continued" and expected[path].dtype.kind == "f":
                    # The fixture's optimizer steps ran the fused kernels: the TF ops round differently.
                    np.testing.assert_allclose(got[path], expected[path], rtol=1e-5, atol=1e-6, err_msg=path)
                else:
                    np.testing.assert_array_equal(got[path], expected[path], err_msg=f"{name}: {path}")
            used = len(ref.key_of)
            assert lfu_layer.counters() == {"rows_in_use": used, "admissions": ref.admissions,
                                            "evictions": ref.evictions, "default_lookups": ref.default_lookups,
                                            "lookups": ref.lookups, "steps": ref.step}
            np.testing.assert_array_equal(got[LFU_PREFIX + "row_keys"][:used], [ref.key_of[r] for r in range(used)])
            np.testing.assert_array_equal(got[LFU_PREFIX + "row_counts"][:used], ref.stamp[:used])
            np.testing.assert_array_equal(got[LFU_PREFIX + "last_seen"][:used], ref.last_seen[:used])
            assert dict(zip(got[f"{LFU}/map/keys"].tolist(), got[f"{LFU}/map/rows"].tolist())) == ref.row_of
    assert int(expected["0/layer/lru_table/evictions"]) > 0 and int(expected["1/layer/lfu_table/evictions"]) > 0
    assert ref.evictions > evictions_at_restore  # the LFU table evicted after the restore, under today's rule
