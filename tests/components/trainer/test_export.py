"""The exported SavedModel's three signatures against the Python reference of the preprocess rules.

Tolerance: 1e-6 absolute on probabilities, the agreement the design asks of
the signatures (they differ only in float32 rounding of the same features).
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.components.trainer import raw_logs
from tests.components.trainer.served_model import export_random_model

ATOL = 1e-6


@pytest.fixture(scope="module")
def served_hash(tmp_path_factory):
    return export_random_model(str(tmp_path_factory.mktemp("hash")), "hash")


@pytest.fixture(scope="module")
def served_vocab(tmp_path_factory):
    return export_random_model(str(tmp_path_factory.mktemp("vocab")), "min_frequency")


@pytest.fixture(params=["hash", "vocab"])
def served(request):
    return request.getfixturevalue(f"served_{request.param}")


@functools.cache
def _load(export_dir: str):
    return tf.saved_model.load(export_dir)


def _signatures(served):
    return _load(served.export_dir).signatures


def _tsv(signatures, lines):
    return signatures["serve_tsv"](lines=tf.constant(lines, tf.string))["probabilities"].numpy()


def _raw(signatures, examples):
    return signatures["serving_default"](examples=tf.constant(examples, tf.string))["probabilities"].numpy()


def _transformed(signatures, examples):
    return signatures["serve_transformed"](examples=tf.constant(examples, tf.string))["probabilities"].numpy()


def _without_label(line: bytes) -> bytes:
    return line.split(b"\t", 1)[1]


def _with_fields(line: bytes, **fields) -> bytes:
    """`line` (40 fields) with raw fields replaced, e.g. I3=b"abc", C2=b""."""
    parts = line.split(b"\t")
    for name, value in fields.items():
        parts[int(name[1:]) + (0 if name[0] == "I" else 13)] = value
    return b"\t".join(parts)


def test_three_signatures_agree_with_the_reference(served):
    lines = raw_logs.good_lines()
    expected = served.expected(lines)
    features = raw_logs.reference_batch(lines, served.mode, served.vocab)
    signatures = _signatures(served)
    results = {
        "serve_tsv": _tsv(signatures, lines),
        "serve_tsv (39 fields)": _tsv(signatures, [_without_label(line) for line in lines]),
        "serving_default": _raw(signatures, [raw_logs.raw_example(line) for line in lines]),
        "serve_transformed": _transformed(signatures, [raw_logs.transformed_example(features, i)
                                                       for i in range(len(lines))]),
    }
    # The comparison means something only if the ids move the output.
    assert expected.std() > 0.05
    for name, probabilities in results.items():
        assert probabilities.shape == (len(lines), 1) and probabilities.dtype == np.float32, name
        np.testing.assert_allclose(probabilities, expected, rtol=0, atol=ATOL, err_msg=name)


def test_39_and_40_field_lines_score_alike_whatever_the_label(served):
    line = raw_logs.good_lines()[3]
    variants = [line, _without_label(line), b"0\t" + _without_label(line), b"\t" + _without_label(line),
                b"not a label\t" + _without_label(line)]
    probabilities = _tsv(_signatures(served), variants)
    np.testing.assert_allclose(probabilities, np.repeat(probabilities[:1], len(variants), axis=0), rtol=0, atol=ATOL)


def test_raw_example_label_is_ignored(served):
    line = raw_logs.good_lines()[3]
    with_label = raw_logs.raw_example(line)
    without = raw_logs.raw_example(_without_label(line))
    np.testing.assert_allclose(*(_raw(_signatures(served), [e]) for e in (with_label, without)), rtol=0, atol=ATOL)


def test_unseen_value_maps_to_the_oov_id(served_vocab):
    line = raw_logs.good_lines()[0]
    seen = served_vocab.vocab["cat_4"][0]
    assert "never-seen" not in served_vocab.vocab["cat_4"]
    unseen, missing, known = (_with_fields(line, C5=v) for v in (b"never-seen", b"", seen.encode()))
    signatures = _signatures(served_vocab)
    got = _tsv(signatures, [unseen, missing, known])
    np.testing.assert_allclose(got[0], got[1], rtol=0, atol=ATOL)
    assert abs(got[0, 0] - got[2, 0]) > 1e-4  # the feature does matter
    raw = _raw(signatures, [raw_logs.raw_example(unseen), raw_logs.raw_example(missing)])
    np.testing.assert_allclose(raw, got[:2], rtol=0, atol=ATOL)
    np.testing.assert_allclose(got, served_vocab.expected([unseen, missing, known]), rtol=0, atol=ATOL)


def test_serves_after_the_preprocess_dir_is_deleted(served_vocab):
    assert not os.path.exists(served_vocab.preprocess_dir)
    assets = os.path.join(served_vocab.export_dir, "assets")
    non_empty = {f"{key}.txt": values for key, values in served_vocab.vocab.items() if values}
    assert sorted(os.listdir(assets)) == sorted(non_empty)
    for name, values in non_empty.items():
        with open(os.path.join(assets, name), encoding="utf-8") as f:
            assert f.read().splitlines() == values
    lines = raw_logs.good_lines()
    np.testing.assert_allclose(_tsv(_signatures(served_vocab), lines), served_vocab.expected(lines), rtol=0, atol=ATOL)


def test_empty_batch_gives_empty_probabilities(served):
    signatures = _signatures(served)
    for result in (_tsv(signatures, []), _raw(signatures, []), _transformed(signatures, [])):
        assert result.shape == (0, 1)


GOOD = raw_logs.good_lines()[0]


@pytest.mark.parametrize("bad,message", [
    (b"1\t2\t3", "wrong field count in line: 3 tab-separated fields, expected 40 (label first) or 39 (no label)"),
    (GOOD + b"\textra", "wrong field count in line: 41 tab-separated fields"),
    (b"", "wrong field count in line: 1 tab-separated fields"),
    (_with_fields(GOOD, I3=b"abc"), "non-integer count in I3: abc"),
    (_with_fields(GOOD, I3=b"1.5"), "non-integer count in I3: 1.5"),
    (_with_fields(GOOD, I3=b"0x10"), "non-integer count in I3: 0x10"),
    (_without_label(_with_fields(GOOD, I13=b"7e3")), "non-integer count in I13: 7e3"),
    (_with_fields(GOOD, I3=b"-4"), "negative count in I3: -4"),
    (_with_fields(GOOD, C2=b"\xff\xfe"), "invalid UTF-8 in line"),
])
def test_malformed_line_raises_naming_the_problem(served, bad, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match="row 2 of the batch") as err:
        _tsv(_signatures(served), [GOOD, GOOD, bad, GOOD])
    assert message in err.value.message


@pytest.mark.parametrize("overrides,message", [
    ({"I3": [-4]}, "negative count in I3: -4"),
    ({"I3": [1, 2]}, "more than one value in I3: 2 values, expected 0 or 1"),
    ({"C2": [b"a", b"b"]}, "more than one value in C2: 2 values, expected 0 or 1"),
    ({"C1": [b"\xff"]}, "invalid UTF-8 in C1"),
])
def test_malformed_raw_example_raises_naming_the_problem(served, overrides, message):
    bad = raw_logs.raw_example(GOOD, **overrides)
    with pytest.raises(tf.errors.InvalidArgumentError, match="row 1 of the batch") as err:
        _raw(_signatures(served), [raw_logs.raw_example(GOOD), bad])
    assert message in err.value.message


def test_raw_example_of_the_wrong_type_raises_naming_the_feature(served):
    example = tf.train.Example.FromString(raw_logs.raw_example(GOOD))
    example.features.feature["I3"].Clear()
    example.features.feature["I3"].bytes_list.value.append(b"12")
    with pytest.raises(tf.errors.InvalidArgumentError, match="I3"):
        _raw(_signatures(served), [example.SerializeToString()])


def test_empty_raw_feature_counts_as_missing(served):
    absent = raw_logs.raw_example(_with_fields(GOOD, I3=b"", C2=b""))
    empty = raw_logs.raw_example(GOOD, I3=[], C2=[])
    blank = raw_logs.raw_example(GOOD, I3=[], C2=[b" "])
    signatures = _signatures(served)
    got = _raw(signatures, [absent, empty, blank])
    np.testing.assert_allclose(got, np.repeat(got[:1], 3, axis=0), rtol=0, atol=ATOL)
    np.testing.assert_allclose(got[:1], _tsv(signatures, [_with_fields(GOOD, I3=b"", C2=b"")]), rtol=0, atol=ATOL)


def test_the_saved_model_holds_only_tensorflow_ops_and_loads_without_embedopt(served):
    """Training uses embedopt's kernels; the SavedModel must not need them (TF Serving has no such library)."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(served.export_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    graph = proto.meta_graphs[0].graph_def
    ops = {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}
    assert "ResourceGather" in ops and not [op for op in ops if op.startswith("Embedopt")], sorted(ops)
    script = ("import tensorflow as tf, sys; m = tf.saved_model.load(sys.argv[1]); "
              "assert 'optimizers' not in sys.modules; print(sorted(m.signatures))")
    out = subprocess.run([sys.executable, "-c", script, served.export_dir], capture_output=True, text=True,
                         timeout=300, cwd="/")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "serve_tsv" in out.stdout
