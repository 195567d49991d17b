"""Issue 20 end to end: multi-hot logs -> preprocess -> two real workers with row-sharded tables and DCN-v2 ->
export -> `embedopt predict` on the raw lines, against the SavedModel's raw tf.Example signature.

The tf.Examples are built here from the raw lines with tf.train protos (a bag field split at the separator that
synth records), independently of the serving code under test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
ENV.pop("TF_CONFIG", None)
ROWS = 3000
BAG_SIZES = (3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 20, 4, 10, 3, 1, 1)


@pytest.fixture(scope="module")
def bag_logs(tmp_path_factory):
    from components.preprocess import pipeline, synth
    from components.preprocess.spec import PreprocessSpec
    from components.preprocess.synth_truth import SynthConfig

    root = tmp_path_factory.mktemp("bags")
    raw = os.path.join(root, "raw", "data.tsv")
    meta = synth.generate(SynthConfig(seed=4, vocab_sizes=(50,) * 26, reference_rows=ROWS, frequent_count=20,
                                      calibration_rows=20_000, bag_sizes=BAG_SIZES), ROWS, raw, progress=False)
    out = os.path.join(root, "data")
    # No --multi-hot-columns: preprocess takes them from synth's .meta.json beside the input.
    pipeline.execute(PreprocessSpec(input=raw, output=out, eval_fraction=0.2, hash_buckets=(1000,) * 26))
    return raw, out, meta


def raw_examples(lines: list[bytes], bag_columns: set[str], separator: bytes) -> list[bytes]:
    """Raw tf.Examples (I1..I13 int64, C1..C26 bytes; a bag a bytes_list of its elements) of raw TSV lines."""
    out = []
    for line in lines:
        fields = line.split(b"\t")
        feature = {}
        for j in range(13):
            if fields[1 + j]:
                feature[f"I{j + 1}"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(fields[1 + j])]))
        for j in range(26):
            name, value = f"C{j + 1}", fields[14 + j]
            if name in bag_columns:
                feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(
                    value=[v for v in value.split(separator) if v]))
            elif value:
                feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
        out.append(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return out


@pytest.mark.slow
def test_bags_train_on_two_workers_export_and_serve_raw_lines(bag_logs, tmp_path):
    raw, data, synth_meta = bag_logs
    with open(os.path.join(data, "metadata.json"), encoding="utf-8") as f:
        metadata = json.load(f)
    bag_columns = {f"C{f + 1}" for f, k in enumerate(BAG_SIZES) if k > 1}
    assert set(metadata["options"]["multi_hot_columns"]) == bag_columns
    out = str(tmp_path / "out")
    cmd = [sys.executable, "-m", "components.trainer.cli", "--data", data, "--output", out, "--train-steps", "30",
           "--batch-size", "64", "--embedding-dim", "8", "--bottom-mlp", "16", "--top-mlp", "16",
           "--interaction", "dcnv2", "--cross-layers", "2", "--cross-rank", "4", "--bag-combiner", "sqrtn",
           "--table-sharding", "row", "--local-workers", "2", "--no-progress", "--json"]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summaries = [json.loads("{" + line.partition("embedopt train: {")[2]) for line in proc.stdout.splitlines()
                 if "embedopt train: {" in line]
    assert len(summaries) == 2 and {s["num_workers"] for s in summaries} == {2}
    np.testing.assert_allclose(summaries[0]["weights_checksum"], summaries[1]["weights_checksum"], rtol=1e-6)
    with open(os.path.join(out, "model_run", "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    assert metrics["steps"] == 30 and 0.0 <= metrics["eval_auc"] <= 1.0
    assert metrics["baseline_auc"] is not None  # the baseline reads bags too

    # Every raw line scored by predict, equal to the SavedModel's raw tf.Example signature on the same lines.
    with open(raw, "rb") as f:
        lines = f.read().split(b"\n")[:400]
    sample = tmp_path / "sample.tsv"
    sample.write_bytes(b"\n".join(lines) + b"\n")
    predicted = tmp_path / "scores.txt"
    proc = subprocess.run([sys.executable, "-m", "components.cli", "predict", "--model", os.path.join(out, "serving_model"),
                           "--input", str(sample), "--output", str(predicted), "--no-progress"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    scores = np.array([float(x) for x in predicted.read_text().splitlines()])
    assert len(scores) == len(lines)
    model = tf.saved_model.load(os.path.join(out, "serving_model"))
    signature = model.signatures["serving_default"]
    (name,) = signature.structured_input_signature[1]
    served = signature(**{name: tf.constant(raw_examples(lines, bag_columns, synth_meta["multi_hot_separator"].encode()))})
    (probabilities,) = served.values()
    np.testing.assert_allclose(probabilities.numpy().reshape(-1), scores, atol=1e-5)
