"""`--table-sharding row`: same training as mirrored, per-worker checkpoints, whole-table export (issue 10)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess

import numpy as np
import pytest
import tensorflow as tf

from components.preprocess.metadata import ExamplesLayout, load_metadata
from components.trainer.fn_args import TrainerConfig
from components.trainer.model import build_model
from components.trainer.run import run_fn
from components.trainer.checkpoint_places import CheckpointPlace, Layout
from components.trainer.sharding import whole_table_model
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
    rows = sum(load_metadata(ExamplesLayout(planted_data).metadata_path).vocab_sizes.values())
    assert mirrored["embedding_rows_per_replica"] == [rows, rows]
    assert row["embedding_rows_per_replica"] == [math.ceil(rows / 2)] * 2
    # Issue 21: the job says which exchange its row-sharded lookups used, and what the chief sent.
    assert row["embedding_exchange"] == "all_to_all" and row["exchange_bytes_per_step"] > 0
    assert mirrored["embedding_exchange"] is None


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


# The model of `train_cmd`, for in-process runs that restore its checkpoints.
CLI_MODEL = dict(batch_size=64, embedding_dim=8, bottom_mlp=(16,), top_mlp=(16,))


def _in_process_args(data, out, steps, **config):
    fn_args = make_fn_args(data, out, steps=steps, strategy="default", **CLI_MODEL, **config)
    fn_args.model_run_dir = os.path.join(out, "model_run")
    fn_args.serving_model_dir = os.path.join(out, "serving_model")
    return fn_args


@pytest.mark.slow
def test_two_worker_checkpoint_reshards_onto_one_worker(two_layouts, planted_data, tmp_path):
    source, _, _ = two_layouts["row"]
    out = str(tmp_path / "one")
    shutil.copytree(os.path.join(source, "model_run", "checkpoints"), os.path.join(out, "model_run", "checkpoints"))
    metrics = run_fn(_in_process_args(planted_data, out, STEPS, table_sharding="row"))
    assert metrics["resumed_from_step"] == STEPS and metrics["steps_this_run"] == 0
    # Independent reference: the one shard is the two old shards' rows interleaved (id = 2 * local + shard).
    old = [tf.train.load_checkpoint(os.path.join(source, "model_run", "checkpoints", "row-shards-of-2", f"shard-{r}",
                                                 f"ckpt-{STEPS}")) for r in range(2)]
    new = tf.train.load_checkpoint(os.path.join(out, "model_run", "checkpoints", "row-shards-of-1", "shard-0",
                                                f"ckpt-{STEPS}"))
    shards = [k for k, shape in new.get_variable_to_shape_map().items() if k.startswith("embedding_optimizer/")
              and len(shape) == 2]
    assert len(shards) == 3  # the table and LazyAdam's m and v
    for key in shards:
        whole = new.get_tensor(key)
        for r in range(2):
            np.testing.assert_array_equal(whole[r::2], old[r].get_tensor(key)[:len(whole[r::2])], err_msg=key)
    # The same state as the two workers': the same exported model.
    got, want = _exported_variables(out), _exported_variables(source)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    # Replicated tables now: the chief writes its one checkpoint from the shards; the same model again.
    shutil.rmtree(os.path.join(out, "serving_model"))
    metrics = run_fn(_in_process_args(planted_data, out, STEPS, table_sharding="mirrored"))
    assert metrics["resumed_from_step"] == STEPS and metrics["steps_this_run"] == 0
    replicated = tf.train.load_checkpoint(os.path.join(out, "model_run", "checkpoints", f"ckpt-{STEPS}"))
    for key in shards:
        np.testing.assert_array_equal(replicated.get_tensor(key), new.get_tensor(key), err_msg=key)
    got = _exported_variables(out)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.mark.slow
def test_one_worker_checkpoint_reshards_onto_two_workers(planted_data, tmp_path):
    out = str(tmp_path / "grow")
    run_fn(_in_process_args(planted_data, out, 10, table_sharding="row", seed=4))
    want = _exported_variables(out)
    shutil.rmtree(os.path.join(out, "serving_model"))
    metrics, _ = _train_two_workers(planted_data, out, 10, "--table-sharding", "row", "--seed", "4")
    assert metrics["resumed_from_step"] == 10 and metrics["embedding_rows_per_replica"] == [533, 533]
    got = _exported_variables(out)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.mark.slow
def test_row_sharded_resume_with_two_workers_matches_an_uninterrupted_run(planted_data, tmp_path, two_layouts):
    source, whole, _ = two_layouts["row"]
    # The uninterrupted run as if both workers were killed after their step-10 checkpoints.
    out = str(tmp_path / "resumed")
    shutil.copytree(os.path.join(source, "model_run"), os.path.join(out, "model_run"))
    for r in range(2):
        shard = os.path.join(out, "model_run", "checkpoints", "row-shards-of-2", f"shard-{r}")
        for name in os.listdir(shard):
            if not name.startswith("ckpt-10."):
                os.remove(os.path.join(shard, name))
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
    metadata = load_metadata(ExamplesLayout(planted_data).metadata_path)
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


def _rows(n: int) -> Layout:
    return Layout(n, (("row_wise", None),))


def test_row_restore_takes_the_newest_step_every_shard_holds(tmp_path):
    root = str(tmp_path)
    # Worker 1 was killed while saving step 30: only steps both shards hold are consistent.
    _touch_checkpoints(os.path.join(root, "row-shards-of-2", "shard-0"), [10, 20, 30])
    _touch_checkpoints(os.path.join(root, "row-shards-of-2", "shard-1"), [10, 20])
    for r in range(2):
        point = CheckpointPlace(root, _rows(2), r).resume_point()
        assert point.path == os.path.join(root, "row-shards-of-2", f"shard-{r}", "ckpt-20")
        assert point.step == 20 and point.reshard_from is None
    assert CheckpointPlace(str(tmp_path / "empty"), _rows(2), 0).resume_point() is None
    # Three workers now: reshard the newest complete step of the two-worker run.
    point = CheckpointPlace(root, _rows(3), 2).resume_point()
    assert point.path == os.path.join(root, "row-shards-of-3", "shard-2", "ckpt-20") and point.reshard_from == 2
    # A newer complete step written by three workers wins over the two workers' step 20.
    for r in range(3):
        _touch_checkpoints(os.path.join(root, "row-shards-of-3", f"shard-{r}"), [40])
    assert CheckpointPlace(root, _rows(2), 1).resume_point().reshard_from == 3


def test_row_restore_reshards_a_mirrored_checkpoint(tmp_path):
    ckpt = tf.train.Checkpoint(v=tf.Variable(1.0))
    ckpt.save(str(tmp_path / "ckpt"))
    point = CheckpointPlace(str(tmp_path), _rows(2), 1).resume_point()
    assert point.source.folder is None and point.source.checkpoint(1, 1) == str(tmp_path / "ckpt-1")
    assert point.path == str(tmp_path / "row-shards-of-2" / "shard-1" / "ckpt-1")
