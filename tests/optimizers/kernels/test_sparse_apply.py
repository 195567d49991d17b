"""EmbedoptSparseApply against the TF path (gather + optimizers.rules + scatter) and NumPy.

Tolerances, for one step: float32 within rtol=1e-5, atol=1e-6 of both
references (the same float32 operations, rounded in another order, or float64
maths; atol=2e-5 for FTRL, see `RuleCase.atol32`); float64 within rtol=1e-12, atol=1e-12 of the TF path and rtol=1e-10,
atol=1e-12 of NumPy (whose equations are arranged differently).
"""

import numpy as np
import pytest
import tensorflow as tf

from optimizers.kernels import ops as kops
from tests.optimizers.kernels import rule_cases as rc

pytestmark = pytest.mark.usefixtures("kernel_ops")

# Unsorted, with duplicates, touching the first and the last of 11 rows.
IDS = [0, 10, 3, 3, 5, 0, 3]
TOL_TF = {"float32": dict(rtol=1e-5, atol=1e-6), "float64": dict(rtol=1e-12, atol=1e-12)}
TOL_NUMPY = {"float32": dict(rtol=1e-5, atol=1e-6), "float64": dict(rtol=1e-10, atol=1e-12)}


def _tol(table, case, dtype):
    tol = dict(table[dtype])
    if dtype == "float32":
        tol["atol"] = max(tol["atol"], case.atol32)
    return tol


def _assert_all_close(got, want, tol):
    np.testing.assert_allclose(got[0], want[0], **tol)
    assert len(got[1]) == len(want[1])
    for got_slot, want_slot in zip(got[1], want[1]):
        np.testing.assert_allclose(got_slot, want_slot, **tol)


def _assert_equal(got, want):
    np.testing.assert_array_equal(got[0], want[0])
    for got_slot, want_slot in zip(got[1], want[1]):
        np.testing.assert_array_equal(got_slot, want_slot)


@pytest.mark.parametrize("width", [1, 3, 129])
@pytest.mark.parametrize("index_dtype", [tf.int32, tf.int64], ids=["int32", "int64"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05], ids=["no_decay", "weight_decay"])
@pytest.mark.parametrize("case", rc.CASES, ids=str)
def test_single_step_matches_tf_path_and_numpy(case, weight_decay, dtype, index_dtype, width):
    problem = rc.make_problem(case, IDS, width, dtype)
    got = rc.run_kernel(case, problem, index_dtype, weight_decay)
    _assert_all_close(got, rc.run_numpy(case, problem, weight_decay), _tol(TOL_NUMPY, case, dtype))
    if case.tf_rule is not None:
        _assert_all_close(got, rc.run_tf_path(case, problem, index_dtype, weight_decay), _tol(TOL_TF, case, dtype))


@pytest.mark.parametrize("case", rc.CASES, ids=str)
def test_untouched_rows_and_slots_unchanged(case):
    problem = rc.make_problem(case, IDS, 4, "float32")
    var, slots = rc.run_kernel(case, problem, tf.int64, weight_decay=0.1)
    untouched = np.setdiff1d(np.arange(problem.var.shape[0]), IDS)
    np.testing.assert_array_equal(var[untouched], problem.var[untouched])
    for got, initial in zip(slots, problem.slots):
        np.testing.assert_array_equal(got[untouched], initial[untouched])


@pytest.mark.parametrize("case", rc.CASES, ids=str)
def test_duplicate_indices_are_summed(case):
    """Two rows for one id give the same result as one row holding their sum."""
    problem = rc.make_problem(case, [4, 2, 4], 5, "float64")
    summed = rc.Problem(problem.var, problem.slots, np.array([2, 4]),
                        np.stack([problem.values[1], problem.values[0] + problem.values[2]]))
    _assert_all_close(rc.run_kernel(case, problem, tf.int32), rc.run_kernel(case, summed, tf.int32),
                      dict(rtol=1e-15, atol=0))


@pytest.mark.parametrize("ids", [[9, 2, 6, 0], [0, 2, 6, 9]], ids=["unsorted", "ascending"])
@pytest.mark.parametrize("case", rc.CASES, ids=str)
def test_unique_ids_paths_match(case, ids):
    """`assume_unique` (no grouping) and the ascending fast path equal the grouped path."""
    problem = rc.make_problem(case, ids, 3, "float32")
    want = rc.run_numpy(case, problem)
    tol = _tol(TOL_NUMPY, case, "float32")
    _assert_all_close(rc.run_kernel(case, problem, tf.int64, assume_unique=True), want, tol)
    _assert_all_close(rc.run_kernel(case, problem, tf.int64), want, tol)


@pytest.mark.parametrize("case", rc.CASES, ids=str)
def test_empty_gradient_is_noop(case):
    problem = rc.make_problem(case, np.zeros([0], np.int64), 3, "float32")
    _assert_equal(rc.run_kernel(case, problem, tf.int64, weight_decay=0.1), (problem.var, problem.slots))


@pytest.mark.parametrize("case", [rc.BY_NAME["adam"], rc.BY_NAME["rowwise_adagrad"]], ids=str)
def test_single_row_table(case):
    problem = rc.make_problem(case, [0, 0], 3, "float64", rows=1)
    _assert_all_close(rc.run_kernel(case, problem, tf.int32), rc.run_numpy(case, problem), TOL_NUMPY["float64"])


@pytest.mark.parametrize("bad_id", [-1, 11, 2**31 - 1])
@pytest.mark.parametrize("index_dtype", [tf.int32, tf.int64], ids=["int32", "int64"])
def test_out_of_range_id_raises_and_changes_nothing(bad_id, index_dtype):
    case = rc.BY_NAME["adam"]
    problem = rc.make_problem(case, [3, 3, bad_id, 10], 3, "float32")
    var = tf.Variable(problem.var)
    slots = [tf.Variable(s) for s in problem.slots]
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"indices\[2\] = {bad_id} is not in \[0, 11\)"):
        kops.sparse_apply(var, slots, tf.constant(problem.ids, index_dtype), problem.values, "adam", case.hypers)
    _assert_equal((var.numpy(), [s.numpy() for s in slots]), (problem.var, problem.slots))


def test_several_adam_steps_match_numpy():
    case = rc.BY_NAME["adam"]
    problem = rc.make_problem(case, IDS, 6, "float64")
    var = tf.Variable(problem.var)
    slots = [tf.Variable(np.zeros_like(problem.var)), tf.Variable(np.zeros_like(problem.var))]
    want_var, want_slots = problem.var.astype(np.float64), {"m": np.zeros_like(problem.var),
                                                           "v": np.zeros_like(problem.var)}
    for step in range(3):
        kops.sparse_apply(var, slots, tf.constant(problem.ids), problem.values, "adam",
                          [0.01, 0.8, 0.95, 1e-6, float(step)])
        step_fn = rc.ref.adam_step
        want_var, want_slots = rc.ref.apply_sparse(step_fn, want_var, want_slots, problem.ids, problem.values, 0.01,
                                                   step, beta_1=0.8, beta_2=0.95, epsilon=1e-6)
    np.testing.assert_allclose(var.numpy(), want_var, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(slots[1].numpy(), want_slots["v"], rtol=1e-10, atol=1e-12)


def test_tf_function_matches_eager():
    case = rc.BY_NAME["ftrl"]
    problem = rc.make_problem(case, IDS, 5, "float32")
    var = tf.Variable(problem.var)
    slots = [tf.Variable(s) for s in problem.slots]

    @tf.function
    def step(ids, values):
        kops.sparse_apply(var, slots, ids, values, "ftrl", list(case.hypers) + [0.05], weight_decay=True)

    step(tf.constant(problem.ids), tf.constant(problem.values))
    _assert_equal((var.numpy(), [s.numpy() for s in slots]), rc.run_kernel(case, problem, tf.int64, 0.05))


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("case", [rc.BY_NAME["sgd"], rc.BY_NAME["adam"], rc.BY_NAME["rowwise_adagrad"]], ids=str)
def test_half_types_close_to_float32(case, dtype):
    """Half tables compute in float and round once: within 1% of float32 on the same rounded inputs."""
    def rounded(x):
        return tf.cast(tf.cast(x, dtype), tf.float32).numpy()

    full = rc.make_problem(case, IDS, 8, "float32")
    problem = rc.Problem(rounded(full.var), [rounded(s) for s in full.slots], full.ids, rounded(full.values))
    got = rc.run_kernel(case, problem, tf.int32, dtype=dtype)
    got = (np.asarray(got[0], np.float32), [np.asarray(s, np.float32) for s in got[1]])
    _assert_all_close(got, rc.run_kernel(case, problem, tf.int32), dict(rtol=1e-2, atol=1e-2))


@pytest.mark.parametrize(
    "rule, slots, hypers, kwargs, message",
    [
        ("adagrad", 1, [0.1], {}, r"hypers: rule 'adagrad' takes 2 values \[lr, epsilon\]"),
        ("sgd", 0, [0.1], {"weight_decay": True}, r"takes 2 values \[lr\] \+ \[weight_decay\]"),
        ("adam", 1, [0.1, 0.9, 0.99, 1e-7, 0.0], {}, r"slots: rule 'adam' takes 2 slot variables, got 1"),
        ("sgd", 0, [0.1], {"nesterov": True}, r"nesterov: only rule 'momentum' takes it, not 'sgd'"),
    ],
)
def test_bad_arguments_raise_naming_them(rule, slots, hypers, kwargs, message):
    var = tf.Variable(tf.zeros([4, 2]))
    slot_vars = [tf.Variable(tf.zeros([4, 2])) for _ in range(slots)]
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        kops.sparse_apply(var, slot_vars, tf.constant([1]), tf.ones([1, 2]), rule, hypers, **kwargs)


def test_mismatched_shapes_and_dtypes_raise():
    var = tf.Variable(tf.zeros([4, 2]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"values must have shape \[1,2\].*got \[1,3\]"):
        kops.sparse_apply(var, [], tf.constant([1]), tf.ones([1, 3]), "sgd", [0.1])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"slots\[0\] must have shape \[4\] for rule"):
        kops.sparse_apply(var, [tf.Variable(tf.zeros([4, 2]))], tf.constant([1]), tf.ones([1, 2]),
                          "rowwise_adagrad", [0.1, 1e-7])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"var: variable .* holds double but the op was given"):
        kops.sparse_apply(tf.Variable(tf.zeros([4, 2], tf.float64)), [], tf.constant([1]), tf.ones([1, 2]), "sgd",
                          [0.1])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"indices must be a vector"):
        kops.sparse_apply(var, [], tf.constant([[1]]), tf.ones([1, 2]), "sgd", [0.1])
