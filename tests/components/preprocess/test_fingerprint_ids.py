"""`--hash-buckets 0`: full 64-bit fingerprints as ids, in preprocess (pyfarmhash) and serving (TensorFlow).

The reference is the documented rule, written here from Python's ints:
Fingerprint64(value) read as a signed int64 (value - 2**64 when >= 2**63),
0 for a missing value; the hash mode's `1 + Fingerprint64 % (N - 1)` must
agree with it.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pyarrow as pa
import pytest
from farmhash import fingerprint64

from components.preprocess import metadata as md
from components.preprocess.bags import ids_of_bags
from components.preprocess.spec import PreprocessSpec, SpecError
from components.preprocess.vocab import fingerprint_ids, hash_ids

VALUES = ["68fd1e64", "", "05db9164", "é-ünïcödé", "a" * 300, "0", " spaced ", "\u0663"]


def signed(unsigned: int) -> int:
    return unsigned - 2**64 if unsigned >= 2**63 else unsigned


def reference_key(value: str) -> int:
    return 0 if value == "" else signed(fingerprint64(value))


def test_fingerprint_ids_are_the_signed_fingerprints_and_missing_is_zero():
    got = fingerprint_ids(pa.array(VALUES * 2, pa.string()))
    assert got.dtype == np.int64
    assert got.tolist() == [reference_key(v) for v in VALUES * 2]
    assert (got < 0).any() and (got > 0).any()  # the full 64 bits, sign included


def test_hash_mode_is_the_fingerprint_modulo():
    keys = fingerprint_ids(pa.array(VALUES, pa.string()))
    unsigned = [int(k) % 2**64 for k in keys]
    expected = [1 + u % 999 if v else 0 for u, v in zip(unsigned, VALUES)]
    assert hash_ids(pa.array(VALUES, pa.string()), 1000).tolist() == expected


def test_bags_get_a_fingerprint_per_element():
    bags = pa.array([["a", "b"], [], ["é"]], pa.list_(pa.string()))
    got = ids_of_bags(bags, fingerprint_ids)
    assert got.to_pylist() == [[reference_key("a"), reference_key("b")], [], [reference_key("é")]]


def test_serving_computes_the_same_keys():
    import tensorflow as tf

    from components.trainer.raw_features import fingerprint_keys

    got = fingerprint_keys(tf.constant([VALUES, VALUES[::-1]]))
    assert got.shape == (2, len(VALUES))
    # The op hashes every string; the caller maps a missing value to 0 (RawFeatureTransform._features).
    expected = [[signed(fingerprint64(v)) for v in row] for row in (VALUES, VALUES[::-1])]
    assert got.numpy().tolist() == expected


def _spec(**changes) -> PreprocessSpec:
    return PreprocessSpec(input="in.tsv", output="out", **changes)


@pytest.mark.parametrize("buckets", [0, (0,), (0,) * 26])
def test_zero_buckets_means_fingerprints_for_every_feature(buckets):
    spec = _spec(hash_buckets=buckets)
    assert spec.fingerprint_ids and spec.vocab_mode == "fingerprint" and spec.id_kind == "fingerprint"
    assert spec.hash_buckets == (0,) * 26 and spec.passes == 1
    assert spec.options_record(4)["vocab_mode"] == "fingerprint"


@pytest.mark.parametrize("buckets, message", [
    ((0, 100), "must be given for every feature, not mixed with bucket counts"),
    ((0, 0), "takes one value or 26"),
])
def test_zero_buckets_cannot_be_mixed(buckets, message):
    with pytest.raises(SpecError, match=message):
        _spec(hash_buckets=buckets)


def test_other_modes_keep_index_ids():
    for spec in (_spec(hash_buckets=100), _spec(vocab_size=10), _spec()):
        assert not spec.fingerprint_ids and spec.id_kind == "index"


def _metadata(**changes) -> md.Metadata:
    meta = md.Metadata(vocab_sizes={k: 5 for k in md.CATEGORICAL_KEYS}, row_counts={"train": 1, "eval": 0},
                       dead_letter_count=0, input_pattern="x", format="tsv", options={})
    return dataclasses.replace(meta, **changes)


def test_index_metadata_writes_no_id_kind_and_old_metadata_loads_as_index():
    data = _metadata().to_json()
    assert "id_kind" not in data
    loaded = md.metadata_from_json(json.loads(json.dumps(data)))
    assert loaded.id_kind == "index" and not loaded.fingerprint_ids


def test_fingerprint_metadata_round_trips_with_zero_sizes():
    meta = _metadata(vocab_sizes={k: 0 for k in md.CATEGORICAL_KEYS}, id_kind="fingerprint")
    data = json.loads(json.dumps(meta.to_json()))
    assert data["id_kind"] == "fingerprint"
    assert md.metadata_from_json(data) == meta


@pytest.mark.parametrize("id_kind, size, message", [
    ("fingerprint", 5, "vocab sizes must be 0"),
    ("index", 0, "vocab sizes must be integers >= 1"),
    ("hashed", 5, "id_kind 'hashed' must be one of"),
])
def test_sizes_must_match_the_id_kind(id_kind, size, message):
    data = _metadata(vocab_sizes={k: size for k in md.CATEGORICAL_KEYS}).to_json()
    data["id_kind"] = id_kind
    with pytest.raises(ValueError, match=message):
        md.metadata_from_json(data)
