"""Per-table placements in the trainer (issue 21): table_wise, row_wise and auto plans train like data_parallel.

Each run trains the per-feature DLRM on 2 real local workers (TF_CONFIG on
localhost) for the same steps on the same examples; the data_parallel run
(today's mirrored, every table replicated, whose one-replica equivalence
tests/components/trainer/test_multi_process.py covers) is the reference.
The layer-level equivalence with one replica on the global batch, for every
optimizer and 2 and 4 workers, is tests/optimizers/test_table_wise.py and
test_sharded.py.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from components.preprocess.metadata import ExamplesLayout, load_metadata
from components.trainer import planner
from components.trainer.fn_args import TrainerConfig
from components.trainer.run import run_fn
from components.trainer.table_plan import planned_tables
from tests.components.trainer.test_run_fn import make_fn_args
from tests.components.trainer.test_table_sharding import _exported_variables, _losses, _train_two_workers

STEPS = 10
# float32 state after 10 steps; split tables sum their gradients in another order than replicated ones.
RTOL, ATOL = 1e-5, 1e-7
FLAGS = ("--table-layout", "per_feature")


def _auto_budget(data) -> int:
    """A budget under which auto keeps some tables data_parallel and packs the rest whole (table_wise): 64 x the
    largest table, so that at most 16 of the 26 fit the data_parallel quarter."""
    metadata = load_metadata(ExamplesLayout(data).metadata_path)
    config = TrainerConfig(embedding_dim=8, table_layout="per_feature")
    return 64 * max(t.state_bytes for t in planned_tables(metadata, config))


@pytest.fixture(scope="module")
def placements(planted_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("placements")
    runs = {}
    for name, extra in (("data_parallel", ()), ("table_wise", ()), ("row_wise", ("--exchange", "all_gather")),
                        ("auto", ("--memory-budget-per-worker", str(_auto_budget(planted_data))))):
        out = str(root / name)
        metrics, workers = _train_two_workers(planted_data, out, STEPS, *FLAGS, "--table-sharding", name, *extra)
        with open(os.path.join(out, "model_run", "checkpoints", "plan.json"), encoding="utf-8") as f:
            runs[name] = (out, metrics, workers, planner.Plan.from_json(f.read()))
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("name", ["table_wise", "row_wise", "auto"])
def test_placement_trains_like_data_parallel_with_two_workers(placements, name):
    out, metrics, workers, plan = placements[name]
    ref_out, ref, _, _ = placements["data_parallel"]
    np.testing.assert_allclose(_losses(out), _losses(ref_out), rtol=RTOL)
    np.testing.assert_allclose(metrics["weights_checksum"], ref["weights_checksum"], rtol=1e-5, atol=1e-6)
    assert metrics["eval_auc"] == pytest.approx(ref["eval_auc"], abs=1e-6)
    # The SavedModel holds every table whole, gathered from wherever it lived.
    got, want = _exported_variables(out), _exported_variables(ref_out)
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=RTOL, atol=ATOL, err_msg=key)
    assert workers["[worker 0]"]["weights_checksum"] == workers["[worker 1]"]["weights_checksum"]
    assert metrics["table_plan"] == [[t.name, t.placement, t.owner] for t in plan.tables]
    assert metrics["embedding_exchange"] == ("all_gather" if name == "row_wise" else "all_to_all")


@pytest.mark.slow
def test_each_plan_holds_the_rows_it_says(placements, planted_data):
    sizes = list(load_metadata(ExamplesLayout(planted_data).metadata_path).vocab_sizes.values())
    tw = placements["table_wise"][3]
    assert {t.placement for t in tw.tables} == {"table_wise"}
    # Whole tables packed over the two workers: each holds the rows of its own tables, 13 tables each.
    owners = [t.owner for t in tw.tables]
    assert sorted(owners) == [0] * 13 + [1] * 13
    held = [sum(rows for rows, owner in zip(sizes, owners) if owner == w) for w in (0, 1)]
    assert placements["table_wise"][1]["embedding_rows_per_replica"] == held
    auto = placements["auto"][3]
    # The tables too big to replicate are looked up every step: whole on one worker they would send more than
    # row-sharded, so auto splits them by rows (planner: the bytes decide between table_wise and row_wise).
    assert {t.placement for t in auto.tables} == {"data_parallel", "row_wise"}
    kinds = [t.placement for t in auto.tables]
    replicated = sum(rows for rows, kind in zip(sizes, kinds) if kind == "data_parallel")
    split = sum(-(-rows // 2) for rows, kind in zip(sizes, kinds) if kind == "row_wise")
    assert placements["auto"][1]["embedding_rows_per_replica"] == [replicated + split] * 2
    assert placements["data_parallel"][1]["embedding_rows_per_replica"] == [sum(sizes)] * 2


def _checkpoints(out: str, step: int, workers: int | None) -> list:
    """Readers of every worker's checkpoint of `step` in the shards folder of `workers` workers under `out`, or
    of the chief's checkpoint (replicated tables) with `workers=None`."""
    import tensorflow as tf

    root = os.path.join(out, "model_run", "checkpoints")
    if workers is None:
        return [tf.train.load_checkpoint(os.path.join(root, f"ckpt-{step}"))]
    (folder,) = [f for f in os.listdir(root) if f.startswith("shards-of-") and
                 json.load(open(os.path.join(root, f, "layout.json"), encoding="utf-8"))["num_workers"] == workers]
    return [tf.train.load_checkpoint(os.path.join(root, folder, f"shard-{r}", f"ckpt-{step}")) for r in range(workers)]


def _whole_tables(readers) -> dict[str, np.ndarray]:
    """Every table variable and slot of a checkpoint whose tables are whole on one worker (one reader, or
    table_wise: the owner holds all rows, every other worker none)."""
    tables = {}
    for key, shape in readers[0].get_variable_to_shape_map().items():
        if key.startswith("embedding_optimizer/") and len(shape) == 2:
            held = [part for part in (r.get_tensor(key) for r in readers) if part.shape[0]]
            assert len(held) == 1, (key, [r.get_tensor(key).shape for r in readers])
            tables[key] = held[0]
    return tables


@pytest.mark.slow
def test_a_table_wise_checkpoint_reshards_onto_one_worker_and_onto_replicated_tables(placements, planted_data,
                                                                                    tmp_path):
    import shutil

    source = placements["table_wise"][0]
    want = _whole_tables(_checkpoints(source, STEPS, 2))
    assert len(want) == 26 * 3  # every table with LazyAdam's m and v
    for sharding in ("table_wise", "data_parallel"):
        out = str(tmp_path / sharding)
        shutil.copytree(os.path.join(source, "model_run"), os.path.join(out, "model_run"))
        # One worker now, the CLI run's model and optimizers (train_cmd): only the plan and N differ.
        fn_args = make_fn_args(planted_data, out, steps=STEPS, strategy="default", table_layout="per_feature",
                               table_sharding=sharding, embedding_dim=8, bottom_mlp=(16,), top_mlp=(16,),
                               batch_size=64, learning_rate=0.003, dense_learning_rate=1e-3)
        fn_args.model_run_dir = os.path.join(out, "model_run")
        fn_args.serving_model_dir = os.path.join(out, "serving_model")
        metrics = run_fn(fn_args)
        assert metrics["resumed_from_step"] == STEPS and metrics["steps_this_run"] == 0
        got = _whole_tables(_checkpoints(out, STEPS, 1 if sharding == "table_wise" else None))
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
        exported, trained = _exported_variables(out), _exported_variables(source)
        for key in trained:
            np.testing.assert_array_equal(exported[key], trained[key], err_msg=key)


@pytest.mark.slow
def test_training_goes_on_alike_after_a_restart_under_another_plan(placements, planted_data, tmp_path):
    import shutil

    runs = {}
    # At the same N: split -> split (table_wise -> row_wise), replicated -> split (data_parallel -> table_wise) and
    # split -> replicated (table_wise -> data_parallel: the chief writes the one checkpoint, the other worker
    # waits for it); two steps more each.
    for first, then in (("table_wise", "row_wise"), ("data_parallel", "table_wise"), ("table_wise", "data_parallel")):
        out = str(tmp_path / f"{first}-then-{then}")
        shutil.copytree(os.path.join(placements[first][0], "model_run"), os.path.join(out, "model_run"))
        metrics, _ = _train_two_workers(planted_data, out, STEPS + 2, *FLAGS, "--table-sharding", then)
        assert metrics["resumed_from_step"] == STEPS and metrics["steps_this_run"] == 2
        runs[then] = (out, metrics)
    (a, ma) = runs["row_wise"]
    got = _exported_variables(a)
    for then in ("table_wise", "data_parallel"):
        b, mb = runs[then]
        np.testing.assert_allclose(_losses(a)[-2:], _losses(b)[-2:], rtol=RTOL, err_msg=then)
        np.testing.assert_allclose(ma["weights_checksum"], mb["weights_checksum"], rtol=1e-5, atol=1e-6, err_msg=then)
        want = _exported_variables(b)
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=RTOL, atol=ATOL, err_msg=f"{then} {key}")
    start = _exported_variables(placements["table_wise"][0])
    assert any(not np.allclose(got[k], start[k]) for k in start)  # the two steps changed the model


def test_a_model_that_cannot_fit_is_refused_naming_the_table(planted_data, tmp_path):
    with pytest.raises(planner.PlanError, match=r"table 'table_cat_0' .* as data_parallel"):
        run_fn(make_fn_args(planted_data, str(tmp_path), steps=2, strategy="default", table_layout="per_feature",
                            table_sharding="data_parallel", memory_budget_per_worker=1000))


def test_plan_is_written_next_to_the_checkpoints_on_one_worker(planted_data, tmp_path):
    run_fn(make_fn_args(planted_data, str(tmp_path), steps=2, strategy="default", table_sharding="auto",
                        baseline=False))
    with open(tmp_path / "run" / "checkpoints" / "plan.json", encoding="utf-8") as f:
        plan = planner.Plan.from_json(f.read())
    assert plan.num_workers == 1 and [t.placement for t in plan.tables] == ["data_parallel"]


def test_cli_refuses_a_model_over_budget_in_one_line(planted_data, tmp_path):
    import subprocess

    from tests.components.trainer.test_multi_process import ENV, ROOT, train_cmd

    proc = subprocess.run(train_cmd(planted_data, str(tmp_path), 2, "--memory-budget-per-worker", "1Ki"), cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("embedopt train:")]
    assert len(lines) == 1 and "table 'shared_table'" in lines[0] and "1.00 KiB budget" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


# -- against one replica on the global batch: bag_training's DLRM (one-hot and multi-hot features) ------------

# Tables of 9, 31, 17 and 5 rows x (4 + 1 wide) columns, with Adagrad (1 slot) 360, 1240, 680 and 200 bytes. With
# 64 x 360 bytes per worker auto replicates cat_3 and cat_0 (<= 1/64 of it) and row-shards cat_1 (above a fair
# share of the rest, (1240 + 680) / N); cat_2 would fit whole on one worker at N = 2 (680 <= 960), but its owner
# would send every worker's ids, more than row-sharded, so it is row-sharded too (at N = 4 it is above the fair
# share, 680 > 480). SGD (no slots) with table_wise: four tables packed one per worker at N = 4.
MIXED_BUDGET = 64 * 360
DP, RW, TW = "data_parallel", "row_wise", "table_wise"
PLACEMENT_CASES = {2: {f"auto:adagrad:{MIXED_BUDGET}": [DP, RW, RW, DP], "table_wise:lazy_adam:1000000": [TW] * 4},
                   4: {f"auto:adagrad:{MIXED_BUDGET}": [DP, RW, RW, DP], "table_wise:sgd:1000000": [TW] * 4}}


@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 4], ids=["2-workers", "4-workers"])
def test_placements_match_one_replica_on_the_global_batch(tmp_path, n):
    import dataclasses
    import math

    import tensorflow as tf

    from tests.components.trainer import bag_training as bags
    from tests.components.trainer.placement_worker import parse_case
    from tests.optimizers.worker_processes import run_workers

    cases = PLACEMENT_CASES[n]
    run_workers("tests.components.trainer.placement_worker", n, str(tmp_path), *cases, timeout=540)
    sizes = list(bags.SIZES.values())
    for case in cases:
        config, _ = parse_case(case)
        one_replica = dataclasses.replace(config, table_sharding="data_parallel")
        losses, single, _ = bags.train(tf.distribute.get_strategy(), bags.rows(), one_replica)
        fresh = bags.build_model(bags.metadata(), one_replica)
        for trained, start in zip(single.embedding_variables(), fresh.embedding_variables()):
            assert not np.allclose(trained.numpy(), start.numpy()), f"{case}: training changed nothing"
        workers = [np.load(tmp_path / f"{case}-worker{i}.npz") for i in range(n)]
        for i, worker in enumerate(workers):
            np.testing.assert_allclose(worker["losses"], losses, rtol=1e-5, err_msg=case)
            for v, want in enumerate(single.trainable_variables):
                np.testing.assert_allclose(worker[f"var{v}"], want.numpy(), rtol=bags.RTOL, atol=bags.ATOL,
                                           err_msg=f"{case} worker {i} {want.name}")
        assert list(workers[0]["placements"]) == cases[case]
        # Rows each worker held, per table: all of them, ceil(rows / N), or all on one worker and none elsewhere.
        held = np.array([w["local_rows"] for w in workers])
        for t, (placement, rows) in enumerate(zip(cases[case], sizes)):
            want = {DP: [rows] * n, RW: [math.ceil(rows / n)] * n, TW: [0] * (n - 1) + [rows]}[placement]
            assert sorted(held[:, t]) == sorted(want), (case, t, held[:, t])
        if case.startswith("table_wise") and n == 4:
            assert sorted(np.argmax(held, axis=0)) == [0, 1, 2, 3]  # one table per worker


def test_exchange_and_budget_roundtrip_through_custom_config_and_are_validated():
    config = TrainerConfig(exchange="all_gather", memory_budget_per_worker=2**30, table_sharding="auto")
    again = TrainerConfig.from_custom_config(config.to_json())
    assert again == config and again.to_json()["exchange"] == "all_gather"
    # At their defaults they stay out of custom_config, so earlier runs' records are unchanged.
    assert {"exchange", "memory_budget_per_worker"}.isdisjoint(TrainerConfig().to_json())
    with pytest.raises(ValueError, match="exchange must be one of"):
        TrainerConfig(exchange="ring")
    with pytest.raises(ValueError, match="memory_budget_per_worker must be a number of bytes"):
        TrainerConfig(memory_budget_per_worker="16Gi")
