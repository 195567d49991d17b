"""The table planner (components/trainer/planner.py): pure, no TensorFlow; sizes checked by hand-computed bytes."""

from __future__ import annotations

import json
import math

import pytest

from components.trainer import planner
from components.trainer.planner import DATA_PARALLEL, ROW_WISE, TABLE_WISE, PlanError, Table, plan_tables

GI = 2**30


def _demo_user():
    """One 10M-row table and 25 small ones, dim 16 + 1 wide column, Adam (2 slots of the row width)."""
    slots = 2 * 17
    return [Table("big", 10_000_000, 17, slots)] + [Table(f"small{i}", 1000 * (i + 1), 17, slots) for i in range(25)]


def test_state_bytes_is_rows_times_dim_plus_slots_times_four():
    assert Table("t", 1000, 17, 34).state_bytes == 1000 * (17 + 34) * 4


@pytest.mark.parametrize("optimizer, want", [("sgd", 0), ("decaying_sgd", 0), ("momentum", 17), ("adagrad", 17),
                                              ("adam", 34), ("lazy_adam", 34), ("adamw", 34), ("ftrl", 34),
                                              ("rowwise_adagrad", 1)])
def test_slot_columns_per_optimizer(optimizer, want):
    assert planner.slot_columns(optimizer, 17) == want


def test_slot_columns_cover_every_optimizer_and_match_their_slots():
    """Each optimizer's slots, built on a [7, 5] variable, hold 7 x slot_columns values (TF only here)."""
    import tensorflow as tf

    import optimizers

    for name in optimizers.OPTIMIZERS:
        var = tf.Variable(tf.zeros([7, 5]))
        opt = optimizers.get(name)
        opt.build([var])
        held = sum(int(tf.size(opt.get_slot(var, slot))) for slot in opt.slot_names)
        assert held == 7 * planner.slot_columns(name, 5), name


def test_ten_million_rows_and_25_small_tables_get_a_sensible_auto_plan():
    tables = _demo_user()
    for n in (2, 4, 8):
        plan = plan_tables(tables, n, 16 * GI)
        placements = dict((t.name, t.placement) for t in plan.tables)
        assert placements["big"] == ROW_WISE
        assert all(placements[f"small{i}"] == DATA_PARALLEL for i in range(25))
        big = next(t for t in plan.tables if t.name == "big")
        assert big.bytes_per_worker == (math.ceil(10_000_000 / n) * 51 * 4,) * n
        small = sum(t.state_bytes for t in tables[1:])
        assert plan.worker_bytes() == [math.ceil(10_000_000 / n) * 51 * 4 + small] * n


def test_one_worker_replicates_everything():
    plan = plan_tables(_demo_user(), 1, 16 * GI)
    assert {t.placement for t in plan.tables} == {DATA_PARALLEL}


def test_mid_size_tables_are_packed_whole_and_balanced():
    """Eight equal 40 MiB tables on 4 workers with 1 GiB each: too big to replicate (> 1/64 of the budget), no
    larger than a fair share, so two whole tables per worker."""
    rows = 40 * 2**20 // (8 * 4)
    tables = [Table(f"t{i}", rows, 8) for i in range(8)]
    plan = plan_tables(tables, 4, GI)
    assert {t.placement for t in plan.tables} == {TABLE_WISE}
    assert sorted(t.owner for t in plan.tables) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert plan.worker_bytes() == [2 * rows * 8 * 4] * 4


def test_a_looked_up_mid_size_table_goes_row_wise_when_whole_it_would_send_more():
    """The same eight tables, now each looked up by 4096 ids per worker: whole on one worker, its owner would
    send 3 x 4096 rows a step against (3/4) x 4096 row-sharded, so the bytes decide for row_wise."""
    rows = 40 * 2**20 // (8 * 4)
    tables = [Table(f"t{i}", rows, 8, ids_per_worker=4096) for i in range(8)]
    plan = plan_tables(tables, 4, GI)
    assert {t.placement for t in plan.tables} == {ROW_WISE}
    for t in plan.tables:
        assert t.step_bytes == math.ceil(3 * 4096 / 4) * (8 + 2 * 4 * 8)
        assert t.bytes_per_worker == (math.ceil(rows / 4) * 8 * 4,) * 4


def test_packing_puts_each_table_on_the_least_loaded_worker():
    sizes = [700, 500, 400, 300]  # rows of width 1, no slots: bytes = 4 x rows
    tables = [Table(f"t{i}", r, 1) for i, r in enumerate(sizes)]
    plan = plan_tables(tables, 2, 10_000, placement="table_wise")
    owners = {t.name: t.owner for t in plan.tables}
    # Largest first onto the worker with the most room: 700 -> 0, 500 -> 1, 400 -> 1 (500 < 700 used), 300 -> 0.
    assert owners == {"t0": 0, "t1": 1, "t2": 1, "t3": 0}
    assert plan.worker_bytes() == [4 * 1000, 4 * 900]


@pytest.mark.parametrize("placement", ["row_wise", "row", "data_parallel", "mirrored"])
def test_explicit_placement_applies_to_every_table(placement):
    plan = plan_tables([Table("a", 10, 4), Table("b", 7, 4)], 3, GI, placement)
    want = planner.canonical(placement)
    assert [t.placement for t in plan.tables] == [want, want]
    if want == ROW_WISE:
        assert plan.tables[1].bytes_per_worker == (math.ceil(7 / 3) * 16,) * 3
    else:
        assert plan.tables[1].bytes_per_worker == (7 * 16,) * 3


def test_a_table_that_cannot_fit_is_refused_naming_it_and_the_bytes():
    tables = [Table("small", 10, 4), Table("huge", 1_000_000, 64, 64)]
    with pytest.raises(PlanError, match=r"table 'huge' \(1,000,000 rows x \(64 \+ 64 slot\).*per worker as row_wise"):
        plan_tables(tables, 2, 100 * 2**20)


def test_data_parallel_refuses_what_row_wise_fits():
    tables = [Table("t", 1_000_000, 16)]  # 64 MB whole, 32 MB per worker row-wise
    assert plan_tables(tables, 2, 40 * 10**6, "row_wise").worker_bytes() == [32 * 10**6] * 2
    with pytest.raises(PlanError, match="table 't'.*as data_parallel"):
        plan_tables(tables, 2, 40 * 10**6, "data_parallel")


def test_plan_json_roundtrip_and_description():
    plan = plan_tables(_demo_user(), 4, 16 * GI)
    again = planner.Plan.from_json(plan.to_json())
    assert again == plan
    data = json.loads(plan.to_json())
    assert data["num_workers"] == 4 and data["tables"][0]["placement"] == ROW_WISE
    text = plan.describe()
    assert "big" in text and "row_wise" in text and text.count("data_parallel") == 25


@pytest.mark.parametrize("text, want", [("16Gi", 16 * GI), ("500M", 500 * 10**6), ("1024", 1024), (2048, 2048)])
def test_budget_quantities(text, want):
    assert planner.parse_budget(text) == want


@pytest.mark.parametrize("text", ["12X", "-1", "0", "lots"])
def test_bad_budget_is_refused(text):
    with pytest.raises(ValueError, match="memory budget"):
        planner.parse_budget(text)


def test_unknown_placement_is_refused():
    with pytest.raises(ValueError, match="table placement must be one of"):
        plan_tables([Table("a", 1, 1)], 1, GI, "column_wise")


def test_step_bytes_per_placement_by_hand():
    # 100 ids per worker, dim 4: an exchanged id moves 8 (id) + 16 (row) + 16 (gradient) bytes.
    table = Table("t", 1000, 4, 0, ids_per_worker=100)
    assert table.step_bytes(ROW_WISE, 4) == 75 * 40  # the 3/4 of its ids that other workers own
    assert table.step_bytes(TABLE_WISE, 4) == 3 * 100 * 40  # padded to the owner's fan-out
    assert table.step_bytes(DATA_PARALLEL, 4) == 3 * 100 * (8 + 16)  # the gradient's ring all-gather
    assert table.step_bytes(ROW_WISE, 1) == 0
    plan = plan_tables([table], 4, GI, "row_wise")
    assert plan.tables[0].step_bytes == 3000 and "2.93 KiB" in plan.describe()
    assert planner.Plan.from_json(plan.to_json()) == plan
