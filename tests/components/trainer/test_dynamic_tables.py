"""End to end with dynamic tables: synth -> preprocess --hash-buckets 0 -> train --table-kind dynamic -> serve/predict.

The capacity (8 rows) is below the distinct values of every feature (about
20), so the run admits and evicts. References: preprocess ids are checked
against pyfarmhash's Fingerprint64 computed here; serving against the
restored Keras model's `training=False` output on the preprocessed rows.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import tensorflow as tf
from farmhash import fingerprint64

from components.preprocess.metadata import ExamplesLayout, load_metadata
from components.preprocess.reader import make_dataset
from components.trainer import cli
from tests.components.trainer.tiny_data import TINY_FLAGS, tiny_logs

CAPACITY = 8
STEPS = 6
BATCH = 64  # TINY_FLAGS' batch size


def _key(value: str) -> int:
    """The fingerprint rule of docs/preprocess.md: Fingerprint64's bits as a signed int64, 0 for missing."""
    if not value:
        return 0
    unsigned = fingerprint64(value)
    return unsigned - 2**64 if unsigned >= 2**63 else unsigned


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("dynamic"))
    raw = tiny_logs(root, seed=5)
    from components.preprocess import pipeline
    from components.preprocess.spec import PreprocessSpec

    data = os.path.join(root, "data")
    pipeline.execute(PreprocessSpec(input=raw, output=data, eval_fraction=0.2, hash_buckets=0))
    out = os.path.join(root, "out")
    code = cli.main(["--data", data, "--output", out, "--table-kind", "dynamic", "--table-capacity", str(CAPACITY),
                     "--train-steps", str(STEPS), "--checkpoint-every", "3", *TINY_FLAGS])
    assert code == 0
    with open(os.path.join(out, "model_run", "metrics.json")) as f:
        metrics = json.load(f)
    return raw, data, out, metrics


def test_preprocess_writes_fingerprints_and_records_the_id_kind(trained):
    raw, data, _, _ = trained
    metadata = load_metadata(data)
    assert metadata.id_kind == "fingerprint" and metadata.fingerprint_ids
    assert metadata.options["vocab_mode"] == "fingerprint"
    assert set(metadata.vocab_sizes.values()) == {0}
    with open(raw) as f:
        expected = {_key(field) for line in f for field in line.rstrip("\n").split("\t")[14:]}
    features, _ = next(iter(make_dataset([ExamplesLayout(data).train_pattern], metadata, 10_000, shuffle=False,
                                         num_epochs=1)))
    seen = {int(v) for key in metadata.categorical_keys for v in features[key].numpy().reshape(-1)}
    assert seen <= expected and len(seen) > 26 * CAPACITY


def test_metrics_count_admissions_and_evictions_per_table(trained, capsys):
    _, data, _, metrics = trained
    tables = metrics["dynamic_tables"]
    assert sorted(tables) == sorted(load_metadata(data).categorical_keys)
    for counters in tables.values():
        assert counters["capacity"] == CAPACITY
        assert counters["rows_in_use"] == CAPACITY
        assert counters["lookups"] == STEPS * BATCH
        # A row is freed only by an eviction, so admissions = rows taken = rows in use + evictions.
        assert counters["admissions"] == counters["rows_in_use"] + counters["evictions"]
        assert counters["evictions"] > 0
        assert counters["default_share"] == pytest.approx(counters["default_lookups"] / counters["lookups"])
    assert metrics["table_rows"] == [CAPACITY] * 26
    assert metrics["config"]["table_kind"] == "dynamic" and metrics["config"]["table_layout"] == "per_feature"


def _restored_model(data, out, metrics):
    from components.trainer.fn_args import TrainerConfig
    from components.trainer.restore import build_and_restore

    config = TrainerConfig.from_custom_config({k: v for k, v in metrics["config"].items()})
    restored = build_and_restore(tf.distribute.get_strategy(), load_metadata(data), config,
                                 os.path.join(out, "model_run"), None, is_chief=False)
    return restored.model


def test_checkpoint_restores_the_tables_counters(trained):
    _, data, out, metrics = trained
    model = _restored_model(data, out, metrics)
    for key, table in zip(model.categorical_keys, model.dynamic_tables()):
        counters = table.counters()
        assert {k: counters[k] for k in ("rows_in_use", "admissions", "evictions", "lookups")} == {
            k: metrics["dynamic_tables"][key][k] for k in ("rows_in_use", "admissions", "evictions", "lookups")}


def test_saved_model_holds_tensorflow_ops_only(trained):
    # Training ran the kernels (native key index); the export must still be loadable without embedopt's library.
    _, _, out, _ = trained
    with open(os.path.join(out, "serving_model", "saved_model.pb"), "rb") as f:
        graph = f.read()
    assert b"Embedopt" not in graph and b"LookupTableFindV2" in graph


def test_serving_raw_lines_equals_the_keras_model_on_preprocessed_rows(trained, tmp_path):
    raw, data, out, metrics = trained
    metadata = load_metadata(data)
    model = _restored_model(data, out, metrics)
    with open(raw) as f:
        lines = [line.rstrip("\n") for line in f]
    by_keys = {tuple(_key(v) for v in line.split("\t")[14:]): line for line in lines}
    features, _ = next(iter(make_dataset([ExamplesLayout(data).eval_pattern], metadata, 10_000, shuffle=False,
                                         num_epochs=1)))
    ids = np.stack([features[key].numpy().reshape(-1) for key in metadata.categorical_keys], axis=1)
    matched = [by_keys[tuple(int(i) for i in row)] for row in ids]
    expected = tf.sigmoid(model(features, training=False)).numpy()

    # An unseen value: its key reads the default (zeros) row, as in the Keras model given that key.
    unseen = [line.split("\t") for line in matched[:5]]
    for fields in unseen:
        fields[14] = "never-seen-value"
    unseen = ["\t".join(fields) for fields in unseen]
    changed = dict(features)
    changed["cat_0"] = tf.concat([tf.fill([5], tf.constant(_key("never-seen-value"), tf.int64)),
                                  features["cat_0"][5:]], axis=0)
    expected_unseen = tf.sigmoid(model({k: v[:5] for k, v in changed.items()}, training=False)).numpy()

    served = tf.saved_model.load(os.path.join(out, "serving_model"))
    got = served.signatures["serve_tsv"](lines=tf.constant(matched + unseen))["probabilities"].numpy()[:, 0]
    np.testing.assert_allclose(got[: len(matched)], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[len(matched):], expected_unseen, rtol=1e-5, atol=1e-6)
    assert not np.allclose(expected_unseen, expected[:5])  # the unseen key did change the score

    from components.predict import main as predict_main

    source, scores = tmp_path / "raw.tsv", tmp_path / "scores.txt"
    source.write_text("\n".join(matched) + "\n")
    assert predict_main(["--model", os.path.join(out, "serving_model"), "--input", str(source),
                         "--output", str(scores), "--no-progress"]) == 0
    np.testing.assert_allclose([float(x) for x in scores.read_text().split()], expected, atol=2e-6)


@pytest.mark.parametrize("kind, hash_buckets, message", [
    ("dynamic", 50, "--table-kind dynamic needs fingerprint ids"),
    ("fixed", 0, "fixed tables cannot index"),
])
def test_table_kind_must_match_the_ids(tmp_path, capsys, kind, hash_buckets, message):
    raw = tiny_logs(str(tmp_path), seed=6)
    from components.preprocess import pipeline
    from components.preprocess.spec import PreprocessSpec

    data = str(tmp_path / "data")
    pipeline.execute(PreprocessSpec(input=raw, output=data, eval_fraction=0.2, hash_buckets=hash_buckets))
    extra = ["--table-capacity", "8"] if kind == "dynamic" else []
    code = cli.main(["--data", data, "--output", str(tmp_path / "out"), "--table-kind", kind, *extra,
                     "--train-steps", "1", *TINY_FLAGS])
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("config, message", [
    ({"table_kind": "dynamic"}, "needs table_capacity"),
    ({"table_kind": "dynamic", "table_capacity": 8}, "needs table_layout 'per_feature'"),
    ({"table_kind": "dynamic", "table_capacity": 8, "table_layout": "per_feature", "table_sharding": "table_wise"},
     "takes table_sharding data_parallel .* or row_wise"),
    ({"table_kind": "dynamic", "table_capacity": "C1:0", "table_layout": "per_feature"}, "N >= 1"),
    ({"table_capacity": 8}, "needs table_kind 'dynamic'"),
    ({"table_kind": "hashed"}, "table_kind must be one of"),
])
def test_bad_table_kind_settings_are_refused(config, message):
    from components.trainer.fn_args import TrainerConfig

    with pytest.raises(ValueError, match=message):
        TrainerConfig.from_custom_config(config)


def test_per_feature_capacities_and_a_missing_one():
    from components.preprocess.metadata import CATEGORICAL_KEYS
    from components.trainer.fn_args import TrainerConfig

    config = TrainerConfig(table_kind="dynamic", table_capacity="100,C3:5,C26:7", table_layout="per_feature")
    assert config.capacities(CATEGORICAL_KEYS) == [100, 100, 5] + [100] * 22 + [7]
    partial = TrainerConfig(table_kind="dynamic", table_capacity="C3:5", table_layout="per_feature")
    with pytest.raises(ValueError, match="no capacity for C1"):
        partial.capacities(CATEGORICAL_KEYS)


def test_fixed_config_records_what_it_recorded_before():
    from components.trainer.fn_args import TrainerConfig

    assert "table_kind" not in TrainerConfig().to_json() and "table_capacity" not in TrainerConfig().to_json()


def test_mirrored_run_with_policy_flags(trained, tmp_path):
    """Two local replicas (MirroredStrategy over the two logical CPUs), admit_after 2, LFU, a shared default row."""
    _, data, _, _ = trained
    out = str(tmp_path / "out")
    code = cli.main(["--data", data, "--output", out, "--table-kind", "dynamic", "--table-capacity", str(CAPACITY),
                     "--admit-after", "2", "--eviction", "lfu", "--default-row", "shared_row",
                     "--sketch-decay-every", "4",
                     "--strategy", "mirrored", "--train-steps", str(STEPS), *TINY_FLAGS])
    assert code == 0
    with open(os.path.join(out, "model_run", "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["num_replicas"] == 2
    assert [metrics["config"][k] for k in ("admit_after", "eviction", "default_row", "sketch_decay_every")] == [
        2, "lfu", "shared_row", 4]
    tables = metrics["dynamic_tables"]
    for counters in tables.values():
        assert (counters["admit_after"], counters["eviction"], counters["default_row"]) == (2, "lfu", "shared_row")
        assert counters["lookups"] == STEPS * BATCH  # the global batch, counted once, not once per replica
        assert counters["admissions"] == counters["rows_in_use"] + counters["evictions"]
    # admit_after 2: a key's first sighting reads the default row, so every table has default lookups.
    assert all(counters["default_lookups"] > 0 for counters in tables.values())
    assert sum(counters["evictions"] for counters in tables.values()) > 0


@pytest.mark.parametrize("config, message", [
    ({"table_kind": "dynamic", "table_capacity": 8, "table_layout": "per_feature", "admit_after": 0}, "admit_after"),
    ({"table_kind": "dynamic", "table_capacity": 8, "table_layout": "per_feature", "eviction": "fifo"}, "eviction"),
    ({"table_kind": "dynamic", "table_capacity": 8, "table_layout": "per_feature", "default_row": "mean"},
     "default_row"),
    ({"table_kind": "dynamic", "table_capacity": 8, "table_layout": "per_feature", "sketch_decay_every": -1},
     "sketch_decay_every"),
    ({"table_kind": "dynamic", "table_capacity": 8, "table_layout": "per_feature", "sketch_decay_every": 5},
     "needs admit_after >= 2"),
    ({"eviction": "lfu"}, "only apply to table_kind 'dynamic'"),
])
def test_bad_policy_settings_are_refused(config, message):
    from components.trainer.fn_args import TrainerConfig

    with pytest.raises(ValueError, match=message):
        TrainerConfig.from_custom_config(config)


def _two_workers(data, out, steps, *extra):
    import subprocess

    from tests.components.trainer.test_multi_process import ENV, ROOT, summaries

    cmd = [sys.executable, "-m", "components.trainer.cli", "--data", data, "--output", out, "--table-kind", "dynamic",
           "--table-capacity", str(CAPACITY), "--admit-after", "2", "--train-steps", str(steps), "--checkpoint-every",
           "3", "--local-workers", "2", "--json", *extra, *TINY_FLAGS]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    found = summaries(proc.stdout)
    assert set(found) == {"[worker 0]", "[worker 1]"}, proc.stdout[-3000:]
    with open(os.path.join(out, "model_run", "metrics.json")) as f:
        return json.load(f), found


@pytest.mark.slow
def test_two_workers_train_one_table_and_resume_it(trained, tmp_path):
    """--local-workers 2: both workers hold the same tables (collective checksums), the counters count the global
    batch once, and a run stopped at step 3 and resumed ends where the uninterrupted one does."""
    _, data, _, _ = trained
    whole, workers = _two_workers(data, str(tmp_path / "whole"), STEPS)
    assert workers["[worker 0]"]["weights_checksum"] == workers["[worker 1]"]["weights_checksum"]
    assert whole["num_replicas"] == 2
    for counters in whole["dynamic_tables"].values():
        assert counters["lookups"] == STEPS * BATCH  # the global batch (--batch-size), counted once
        assert counters["admissions"] == counters["rows_in_use"] + counters["evictions"]
    assert sum(c["evictions"] for c in whole["dynamic_tables"].values()) > 0
    # The run as if killed after its step-3 checkpoint: the same folder without what came later.
    import glob
    import shutil

    out = str(tmp_path / "resumed")
    shutil.copytree(str(tmp_path / "whole" / "model_run"), os.path.join(out, "model_run"))
    checkpoints = os.path.join(out, "model_run", "checkpoints")
    for path in glob.glob(os.path.join(checkpoints, f"ckpt-{STEPS}.*")) + [os.path.join(checkpoints, "checkpoint")]:
        os.remove(path)
    resumed, _ = _two_workers(data, out, STEPS)
    assert resumed["resumed_from_step"] == 3
    assert resumed["dynamic_tables"] == whole["dynamic_tables"]
    np.testing.assert_allclose(resumed["weights_checksum"], whole["weights_checksum"], rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_two_workers_split_the_tables_by_key_hash(trained, tmp_path, capsys):
    """--table-sharding row_wise: each worker owns the keys that hash to it; the counters add up to the global
    batch; the SavedModel holds every owner's keys and rows; a restart on another worker count is refused."""
    _, data, _, _ = trained
    out = str(tmp_path / "split")
    metrics, workers = _two_workers(data, out, STEPS, "--table-sharding", "row_wise")
    assert workers["[worker 0]"]["weights_checksum"] == workers["[worker 1]"]["weights_checksum"]
    tables = metrics["dynamic_tables"]
    assert metrics["embedding_rows_per_replica"] == [len(tables) * (CAPACITY // 2)] * 2
    for counters in tables.values():
        assert counters["lookups"] == STEPS * BATCH and counters["capacity"] == CAPACITY
        assert counters["admissions"] == counters["rows_in_use"] + counters["evictions"]
    assert sum(c["evictions"] for c in tables.values()) > 0
    # Every owner's keys and rows, from the two workers' checkpoints, are in the SavedModel.
    shards = [tf.train.load_checkpoint(os.path.join(out, "model_run", "checkpoints", "row-shards-of-2", f"shard-{r}",
                                                    f"ckpt-{STEPS}")) for r in range(2)]
    served = tf.train.load_checkpoint(os.path.join(out, "serving_model", "variables", "variables"))
    owned = {}
    for name in sorted(shards[0].get_variable_to_shape_map()):
        if name.endswith("row_keys/.ATTRIBUTES/VARIABLE_VALUE") or "/row_keys/" in name:
            used_name = name.replace("row_keys", "rows_in_use")
            for reader in shards:
                owned.setdefault(name, []).extend(reader.get_tensor(name)[:reader.get_tensor(used_name)].tolist())
    assert len(owned) == len(tables)
    in_use = sorted(len(keys) for keys in owned.values())
    assert in_use == sorted(c["rows_in_use"] for c in tables.values())
    exported = {}
    for name in served.get_variable_to_shape_map():
        if "row_keys" in name:
            used = served.get_tensor(name.replace("row_keys", "rows_in_use"))
            exported[name] = sorted(served.get_tensor(name)[:used].tolist())
    assert sorted(exported.values()) == sorted(sorted(keys) for keys in owned.values())
    # One worker now: the keys' owners would change, which no resharding covers.
    code = cli.main(["--data", data, "--output", out, "--table-kind", "dynamic", "--table-capacity", str(CAPACITY),
                     "--admit-after", "2", "--table-sharding", "row_wise", "--train-steps", str(STEPS + 3),
                     *TINY_FLAGS])
    assert code == 2
    assert "dynamic tables resume only with the --table-sharding and worker count" in capsys.readouterr().err
