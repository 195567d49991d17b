"""`--table-sharding row`: same training as mirrored, per-worker checkpoints, whole-table export (issue 10)."""

from __future__ import annotations

import json
import math
import os
import subprocess

import numpy as np
import pytest
import tensorflow as tf

from components.preprocess.metadata import load_metadata
from components.trainer.fn_args import TrainerConfig
from components.trainer.model import build_model
from components.trainer.run import run_fn
from components.trainer.sharding import CheckpointPlace, whole_table_model
from tests.components.trainer.test_multi_process import ENV, ROOT, summaries, train_cmd
from tests.components.trainer.test_run_fn import make_fn_args

STEPS = 30
# float32 state after 30 steps; the sharded gradient is summed in another order than the mirrored one.
RTOL, ATOL = 1e-5, 1e-7


def _train_two_workers(data, out, steps, *extra):
    proc = subprocess.run(train_cmd(data, out, steps, "--local-workers", "2", "--checkpoint-every", "10", *extra),
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    found = summaries(proc.stdout)
    assert set(found) == {"[worker 0]", "[worker 1]"}, proc.stdout[-3000:]
    with open(os.path.join(out, "model_run", "metrics.json"), encoding="utf-8") as f:
        return json.load(f), found


def _exported_variables(out) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(os.path.join(out, "serving_model", "variables", "variables"))
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
            if key.endswith("VARIABLE_VALUE")}


def _losses(out) -> np.ndarray:
    with open(os.path.join(out, "model_run", "losses.json"), encoding="utf-8") as f:
        return np.array(json.load(f))


@pytest.fixture(scope="module")
def two_layouts(planted_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("sharding")
    runs = {}
    for layout in ("row", "mirrored"):
        out = str(root / layout)
        runs[layout] = (out, *_train_two_workers(planted_data, out, STEPS, "--table-sharding", layout))
    return runs


@pytest.mark.slow
def test_row_and_mirrored_train_alike_with_two_workers(two_layouts, planted_data):
    (row_out, row, row_workers), (mir_out, mirrored, _) = two_layouts["row"], two_layouts["mirrored"]
    assert row["table_sharding"] == "row" and mirrored["table_sharding"] == "mirrored"
    np.testing.assert_allclose(_losses(row_out), _losses(mir_out), rtol=RTOL)
    assert row["eval_auc"] == pytest.approx(mirrored["eval_auc"], abs=1e-6)
    np.testing.assert_allclose(row["weights_checksum"], mirrored["weights_checksum"], rtol=1e-5, atol=1e-6)
    # The SavedModel holds the whole table, gathered from the shards: the mirrored run's rows.
    got, want = _exported_variables(row_out), _exported_variables(mir_out)
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=RTOL, atol=ATOL, err_msg=key)
    # Both workers agree (collective checksums), and each holds half the rows.
    assert row_workers["[worker 0]"]["weights_checksum"] == row_workers["[worker 1]"]["weights_checksum"]
    rows = sum(load_metadata(os.path.join(planted_data, "metadata.json")).vocab_sizes.values())
    assert mirrored["embedding_rows_per_replica"] == [rows, rows]
    assert row["embedding_rows_per_replica"] == [math.ceil(rows / 2)] * 2


@pytest.mark.slow
def test_each_worker_checkpoints_its_own_shard(two_layouts):
    out, _, _ = two_layouts["row"]
    root = os.path.join(out, "model_run", "checkpoints")
    tables = []
    for r in range(2):
        shard = os.path.join(root, "row-shards-of-2", f"shard-{r}")
        reader = tf.train.load_checkpoint(os.path.join(shard, f"ckpt-{STEPS}"))
        shapes = reader.get_variable_to_shape_map()
        # The table and LazyAdam's two slots: ceil(1066 / 2) rows each, on each worker.
        held = sorted(k for k, shape in shapes.items() if k.startswith("embedding_optimizer/") and len(shape) == 2)
        assert len(held) == 3 and all(shapes[k] == [533, 9] for k in held), {k: shapes[k] for k in held}
        tables.append(reader.get_tensor("embedding_optimizer/_trainable_variables/0/.ATTRIBUTES/VARIABLE_VALUE"))
    assert not np.array_equal(tables[0], tables[1])  # each its own rows
    assert tf.train.latest_checkpoint(root) is None  # nothing written in the mirrored place


@pytest.mark.slow
def test_restore_onto_another_worker_count_names_both_counts(two_layouts, planted_data, tmp_path):
    out, _, _ = two_layouts["row"]
    fn_args = make_fn_args(planted_data, out, steps=STEPS + 5, strategy="default", table_sharding="row")
    fn_args.model_run_dir = os.path.join(out, "model_run")
    with pytest.raises(ValueError, match=r"written by 2 worker\(s\); this run has 1"):
        run_fn(fn_args)
    fn_args.custom_config["table_sharding"] = "mirrored"
    with pytest.raises(ValueError, match="--table-sharding row run over 2 worker"):
        run_fn(fn_args)


@pytest.mark.slow
def test_row_sharded_resume_with_two_workers_matches_an_uninterrupted_run(planted_data, tmp_path, two_layouts):
    _, whole, _ = two_layouts["row"]
    out = str(tmp_path / "resumed")
    _train_two_workers(planted_data, out, 10, "--table-sharding", "row")
    resumed, _ = _train_two_workers(planted_data, out, STEPS, "--table-sharding", "row")
    assert resumed["resumed_from_step"] == 10 and resumed["steps"] == STEPS
    np.testing.assert_allclose(resumed["weights_checksum"], whole["weights_checksum"], rtol=1e-5, atol=1e-6)
    assert resumed["eval_auc"] == pytest.approx(whole["eval_auc"], abs=1e-6)


def test_single_process_row_equals_mirrored(planted_data, tmp_path):
    metrics = {}
    for layout in ("row", "mirrored"):
        metrics[layout] = run_fn(make_fn_args(planted_data, str(tmp_path / layout), steps=8, strategy="default",
                                              table_sharding=layout))
    np.testing.assert_allclose(metrics["row"]["weights_checksum"], metrics["mirrored"]["weights_checksum"],
                               rtol=1e-6, atol=1e-7)
    assert metrics["row"]["eval_auc"] == pytest.approx(metrics["mirrored"]["eval_auc"], abs=1e-6)
    got, want = (_exported_variables_at(str(tmp_path / layout / "serving")) for layout in ("row", "mirrored"))
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-7, err_msg=key)


def _exported_variables_at(serving_dir):
    reader = tf.train.load_checkpoint(os.path.join(serving_dir, "variables", "variables"))
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map() if key.endswith("VARIABLE_VALUE")}


def test_row_sharding_refuses_several_local_replicas(planted_data, tmp_path):
    with pytest.raises(ValueError, match="one replica per process.*--local-workers"):
        run_fn(make_fn_args(planted_data, str(tmp_path), steps=2, strategy="mirrored", table_sharding="row"))


def test_export_refuses_tables_larger_than_the_chiefs_memory(planted_data):
    metadata = load_metadata(os.path.join(planted_data, "metadata.json"))
    config = TrainerConfig(table_sharding="row", embedding_dim=4, bottom_mlp=(8,), top_mlp=(8,))
    model = build_model(metadata, config)
    strategy = tf.distribute.get_strategy()
    rows = sum(metadata.vocab_sizes.values())
    with pytest.raises(ValueError, match=r"needs the whole embedding tables .* GiB available"):
        whole_table_model(strategy, model, metadata, config, is_chief=True, available=rows * 5 * 4 - 1)
    twin = whole_table_model(strategy, model, metadata, config, is_chief=True, available=1 << 40)
    np.testing.assert_array_equal(twin.tables[0].embeddings.numpy(), model.tables[0].embeddings.numpy())


def _touch_checkpoints(directory, steps):
    os.makedirs(directory, exist_ok=True)
    for step in steps:
        open(os.path.join(directory, f"ckpt-{step}.index"), "w").close()


def test_row_restore_takes_the_newest_step_every_shard_holds(tmp_path):
    root = str(tmp_path)
    # Worker 1 was killed while saving step 30: only steps both shards hold are consistent.
    _touch_checkpoints(os.path.join(root, "row-shards-of-2", "shard-0"), [10, 20, 30])
    _touch_checkpoints(os.path.join(root, "row-shards-of-2", "shard-1"), [10, 20])
    for r in range(2):
        place = CheckpointPlace(root, "row", 2, r)
        assert place.latest() == os.path.join(root, "row-shards-of-2", f"shard-{r}", "ckpt-20")
    assert CheckpointPlace(str(tmp_path / "empty"), "row", 2, 0).latest() is None


def test_row_restore_refuses_a_mirrored_checkpoint(tmp_path):
    ckpt = tf.train.Checkpoint(v=tf.Variable(1.0))
    ckpt.save(str(tmp_path / "ckpt"))
    with pytest.raises(ValueError, match="mirrored run; this run uses --table-sharding row"):
        CheckpointPlace(str(tmp_path), "row", 2, 0).latest()
