"""`bench --quick` does not judge goals whose target is for the full run's sizes.

The benchmarks' measuring parts are replaced by fakes (no TensorFlow work, no
child processes), so these tests check only how each benchmark turns its
measurements into goals, in --quick and in the full run. Every fake makes
every goal fail, so a goal that is judged in --quick shows up as "NO".
"""

from __future__ import annotations

import types

import pytest

from benchmarks import apply_bandwidth, dense_parity, harness, multi_worker, results, step_time
from benchmarks.__main__ import goals_table


class _Scalar:
    def numpy(self):
        return 0.0


def _fake_step_time(monkeypatch):
    # Step time grows 10x per 10x rows and Keras is as fast as ours: both goals fail.
    monkeypatch.setattr(step_time, "make_batches", lambda rows, batch, ids, count=4: ([], 1.0))
    monkeypatch.setattr(step_time, "time_pair", lambda pair, rows, *a, **k: [rows * 1e-7])
    monkeypatch.setattr(step_time, "gc", types.SimpleNamespace(collect=lambda: 0))  # ~0.2 s a call, 60 calls
    monkeypatch.setattr(harness, "run_child",
                        lambda target, kwargs, **kw: {**step_time.measure_size(**kwargs), "peak_rss_bytes": 1})
    return step_time


def _fake_apply_bandwidth(monkeypatch):
    def run_child(target, cfg, **kw):
        cases = [{"params": {"case": "memcpy", "bytes": cfg["copy_bytes"]}, "bytes": 2 * cfg["copy_bytes"],
                  "repeats_s": [1.0]},
                 {"params": {"case": "tf_gather_scatter", "unique_rows": cfg["unique_rows"]}, "bytes": 1,
                  "repeats_s": [1.0]},
                 {"params": {"case": "stage:gather", "unique_rows": cfg["unique_rows"]}, "repeats_s": [1.0]}]
        cases += [{"params": {"case": "apply", "optimizer": name, "rows": cfg["rows"],
                              "unique_rows": cfg["unique_rows"]}, "bytes": 1, "repeats_s": [1.0]}
                  for name in cfg["optimizers"]]
        return {"cases": cases, "peak_rss_bytes": 1}

    monkeypatch.setattr(harness, "run_child", run_child)
    return apply_bandwidth


def _fake_dense_parity(monkeypatch):
    called = []

    def fn(which):
        return lambda: called.append(which) or _Scalar()

    monkeypatch.setattr(dense_parity, "build", lambda which, *a: (fn(which), fn(which)))

    def time_calls(call, warmup, repeats):  # ours takes twice as long as Keras's: the parity goal fails
        called.clear()
        call(0)
        return [2.0 if called == ["ours"] else 1.0] * repeats

    monkeypatch.setattr(harness, "time_calls", time_calls)
    return dense_parity


def _fake_multi_worker(monkeypatch):
    monkeypatch.setattr(multi_worker, "launch", lambda cfg, **unused: [{
        "num_replicas": 2, "peak_rss_bytes": 1,
        "cases": [{"rows": rows, "repeats_s": [rows * 1e-7], "unique_rows_per_worker_batch": 1.0,
                   "embedding_gradient": "IndexedSlices"} for rows in cfg["rows"]]}])

    def fake_scaling(quick, repeats=None, progress=None):
        # Bytes that double with N and a cost model 50% off: both exchange goals fail.
        config = dict(multi_worker.EXCHANGE_QUICK if quick else multi_worker.EXCHANGE_FULL, workers=[2, 4])
        measurements = [results.measurement(dict(workers=n, exchange=e), [0.01 * n],
                                            bytes_per_worker_per_step=1000.0 * n, model_predicted=1500.0 * n)
                        for e in multi_worker.EXCHANGES for n in (2, 4)]
        by = {(m["params"]["exchange"], m["params"]["workers"]): m for m in measurements}
        return {"config": config, "measurements": measurements, "predicted_bytes_per_worker": {}, "by": by,
                "largest": 4}

    monkeypatch.setattr(multi_worker, "exchange_scaling", fake_scaling)
    return multi_worker


FAKES = {"step_time": _fake_step_time, "apply_bandwidth": _fake_apply_bandwidth,
         "dense_parity": _fake_dense_parity, "multi_worker": _fake_multi_worker}


@pytest.mark.parametrize("name", sorted(FAKES))
def test_quick_run_marks_size_dependent_goals_not_judged(monkeypatch, name):
    module = FAKES[name](monkeypatch)
    bench = module.run(quick=True, repeats=1)
    assert bench["goals"], name
    for g in bench["goals"]:
        assert not g["met"], g  # the fakes fail every goal
        assert g.get("full_run_only") is True, g["name"]
        assert g["note"].startswith("not judged in --quick"), g["note"]
    document = results.new_document(quick=True)
    document["benchmarks"][name] = bench
    table = goals_table(document)
    assert " NO" not in table and results.NOT_JUDGED in table, table


@pytest.mark.parametrize("name", sorted(FAKES))
def test_full_run_judges_every_goal(monkeypatch, name):
    module = FAKES[name](monkeypatch)
    bench = module.run(quick=False, repeats=1)
    assert bench["goals"], name
    for g in bench["goals"]:
        assert "full_run_only" not in g and not g["met"], g
    document = results.new_document(quick=False)
    document["benchmarks"][name] = bench
    assert goals_table(document).count(" NO") == len(bench["goals"])


def test_report_markdown_does_not_call_a_quick_goal_missed():
    from benchmarks import report

    goal = results.goal("x: step @100k/10k", "<= 1.5", 2.0, False, results.quick_note("100k/10k", "10M/1M"),
                        full_run_only=True)
    for quick, expected in ((True, results.NOT_JUDGED), (False, "**no**")):
        document = results.new_document(quick=quick)
        document["benchmarks"]["x"] = results.benchmark("x", [], goals=[goal])
        row = report.goals_markdown(document).splitlines()[-1]
        assert row.endswith(f"| {expected} |"), row
