"""Tests for `optimizers.legacy`: the OptimizerV2 (tf_keras) classes.

Every numeric test compares against the NumPy references in
`tests/optimizers/reference.py`, in float64, with float32 variables:
rtol=1e-6, atol=1e-6 (a few ulps of values of order 1 after a few steps).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from optimizers import legacy
from tests.optimizers import reference

TOL = dict(rtol=1e-6, atol=1e-6)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str  # the rule's name in reference.initial_slots
    cls: type
    hyper: dict  # constructor arguments besides learning_rate
    step_fn: object  # reference.*_step

    def make(self, learning_rate=0.1, **kwargs):
        return self.cls(learning_rate=learning_rate, **self.hyper, **kwargs)

    def ref_step(self, var, slots, g, lr, t):
        return self.step_fn(var, slots, g, lr, t, **self.hyper)


SGD = Case("sgd", legacy.SGD, {}, reference.sgd_step)
MOMENTUM = Case("momentum", legacy.Momentum, {"momentum": 0.9}, reference.momentum_step)
# 0.5 rather than the default 0.99 so that a wrong step count moves the result far beyond the tolerance.
DECAYING = Case("decaying_sgd", legacy.DecayingSGD, {"decay_rate": 0.5}, reference.decaying_sgd_step)
CASES = [pytest.param(c, id=c.name) for c in (SGD, MOMENTUM, DECAYING)]
NON_LAZY_CASES = [pytest.param(c, id=c.name) for c in (SGD, DECAYING)]


def _rng(seed=0):
    return np.random.default_rng(seed)


def _slices(indices, values, num_rows):
    values = np.asarray(values, np.float32)
    return tf.IndexedSlices(
        tf.constant(values),
        tf.constant(indices, tf.int64),
        tf.constant((num_rows,) + values.shape[1:], tf.int64),
    )


def _assert_state(opt, var, expected_var, expected_slots):
    np.testing.assert_allclose(var.numpy(), expected_var, **TOL)
    for slot_name, expected in expected_slots.items():
        np.testing.assert_allclose(opt.get_slot(var, slot_name).numpy(), expected, **TOL)


@pytest.mark.parametrize("case", CASES)
def test_config_roundtrip(case):
    opt = case.make(learning_rate=0.25, clipnorm=1.5)
    config = opt.get_config()
    assert config["learning_rate"] == 0.25 and config["clipnorm"] == 1.5
    for key, value in case.hyper.items():
        assert config[key] == value
    assert case.cls.from_config(config).get_config() == config

    serialized = tf_keras.optimizers.serialize(opt)
    assert serialized["registered_name"] == f"embedopt>Legacy{case.cls.__name__}"
    restored = tf_keras.optimizers.deserialize(serialized)
    assert type(restored) is case.cls
    assert restored.get_config() == config


@pytest.mark.parametrize("case", CASES)
def test_lr_alias_sets_learning_rate(case):
    with pytest.warns(UserWarning, match="lr"):
        opt = case.cls(lr=0.3, **case.hyper)
    assert opt.get_config()["learning_rate"] == pytest.approx(0.3)


@pytest.mark.parametrize("num_steps", [1, 3])
@pytest.mark.parametrize("case", CASES)
def test_dense_steps_match_numpy(case, num_steps):
    rng = _rng()
    init = rng.normal(size=(5, 3)).astype(np.float32)
    grads = rng.normal(size=(num_steps, 5, 3)).astype(np.float32)
    var = tf.Variable(init)
    opt = case.make(learning_rate=0.1)
    expected, slots = init.astype(np.float64), reference.initial_slots(case.name, init.astype(np.float64))
    for t, g in enumerate(grads):
        opt.apply_gradients([(tf.constant(g), var)])
        expected, slots = case.ref_step(expected, slots, g.astype(np.float64), 0.1, t)
    _assert_state(opt, var, expected, slots)
    assert int(opt.iterations.numpy()) == num_steps


@pytest.mark.parametrize("case", CASES)
def test_duplicate_indices_are_summed_and_untouched_rows_unchanged(case):
    # Row 1 appears twice in step 1, row 4 three times in step 2; rows 2, 3, 5 are never touched.
    steps = [[1, 4, 1], [4, 0, 4, 4]]
    rng = _rng(1)
    init = rng.normal(size=(6, 3)).astype(np.float32)
    var = tf.Variable(init)
    opt = case.make(learning_rate=0.1)
    expected, slots = init.astype(np.float64), reference.initial_slots(case.name, init.astype(np.float64))
    for t, indices in enumerate(steps):
        values = rng.normal(size=(len(indices), 3)).astype(np.float32)
        opt.apply_gradients([(_slices(indices, values, 6), var)])
        expected, slots = reference.apply_sparse(
            case.step_fn, expected, slots, np.array(indices), values.astype(np.float64), 0.1, t, **case.hyper
        )
    _assert_state(opt, var, expected, slots)
    untouched = [2, 3, 5]
    np.testing.assert_array_equal(var.numpy()[untouched], init[untouched])
    for slot_name in slots:
        np.testing.assert_array_equal(opt.get_slot(var, slot_name).numpy()[untouched], 0.0)


def test_sparse_momentum_is_lazy():
    """Row 1's momentum is not applied on a step whose gradient does not touch row 1."""
    init = np.ones((3, 2), np.float32)
    var = tf.Variable(init)
    opt = MOMENTUM.make(learning_rate=0.1)
    opt.apply_gradients([(_slices([1], [[1.0, 1.0]], 3), var)])
    after_first = var.numpy().copy()
    opt.apply_gradients([(_slices([0], [[1.0, 1.0]], 3), var)])
    np.testing.assert_array_equal(var.numpy()[1], after_first[1])
    np.testing.assert_array_equal(opt.get_slot(var, "momentum").numpy()[1], [1.0, 1.0])
    np.testing.assert_array_equal(var.numpy()[2], init[2])


@pytest.mark.parametrize("case", NON_LAZY_CASES)
def test_sparse_equals_dense(case):
    rng = _rng(2)
    init = rng.normal(size=(6, 3)).astype(np.float32)
    sparse_var, dense_var = tf.Variable(init), tf.Variable(init)
    sparse_opt, dense_opt = case.make(), case.make()
    for indices in ([0, 5, 0, 2], [3, 3, 1], [4, 2, 4]):
        values = rng.normal(size=(len(indices), 3)).astype(np.float32)
        sparse_opt.apply_gradients([(_slices(indices, values, 6), sparse_var)])
        dense_grad = tf.constant(reference.densify(np.array(indices), values, 6), tf.float32)
        dense_opt.apply_gradients([(dense_grad, dense_var)])
    np.testing.assert_allclose(sparse_var.numpy(), dense_var.numpy(), **TOL)


@pytest.mark.parametrize("case", CASES)
def test_iterations_count_steps_not_variables_under_tf_function(case):
    """Three variables (two dense gradients, one sparse), three steps in a tf.function.

    The step counter must read 0, 1, 2 on steps 1..3 for every variable, so
    DecayingSGD applies decay_rate**0, **1, **2, and `iterations` ends at 3.
    """
    rng = _rng(3)
    inits = {
        "a": rng.normal(size=(4, 2)).astype(np.float32),
        "b": rng.normal(size=(3,)).astype(np.float32),
        "table": rng.normal(size=(5, 2)).astype(np.float32),
    }
    variables = {k: tf.Variable(v) for k, v in inits.items()}
    ids = np.array([3, 0, 3])
    opt = case.make(learning_rate=0.1)

    @tf.function
    def train_step(w_a, w_b, w_table):
        with tf.GradientTape() as tape:
            loss = (
                tf.reduce_sum(w_a * variables["a"])
                + tf.reduce_sum(w_b * variables["b"])
                + tf.reduce_sum(w_table * tf.gather(variables["table"], ids))
            )
        grads = tape.gradient(loss, list(variables.values()))
        opt.apply_gradients(zip(grads, variables.values()))

    expected = {k: v.astype(np.float64) for k, v in inits.items()}
    slots = {k: reference.initial_slots(case.name, v) for k, v in expected.items()}
    for t in range(3):
        shapes = {"a": (4, 2), "b": (3,), "table": (len(ids), 2)}
        w = {k: rng.normal(size=shape).astype(np.float32) for k, shape in shapes.items()}
        train_step(w["a"], w["b"], w["table"])
        for k in ("a", "b"):
            expected[k], slots[k] = case.ref_step(expected[k], slots[k], w[k].astype(np.float64), 0.1, t)
        expected["table"], slots["table"] = reference.apply_sparse(
            case.step_fn, expected["table"], slots["table"], ids, w["table"].astype(np.float64), 0.1, t,
            **case.hyper,
        )
    assert int(opt.iterations.numpy()) == 3
    for k, var in variables.items():
        _assert_state(opt, var, expected[k], slots[k])


@pytest.mark.parametrize("case", CASES)
def test_learning_rate_schedule_accepted(case):
    schedule = tf_keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
    opt = case.make(learning_rate=schedule)
    rng = _rng(4)
    init = rng.normal(size=(4, 2)).astype(np.float32)
    var = tf.Variable(init)
    expected, slots = init.astype(np.float64), reference.initial_slots(case.name, init.astype(np.float64))
    for t in range(3):
        g = rng.normal(size=(4, 2)).astype(np.float32)
        opt.apply_gradients([(tf.constant(g), var)])
        expected, slots = case.ref_step(expected, slots, g.astype(np.float64), 0.1 * 0.5**t, t)
    _assert_state(opt, var, expected, slots)
    restored = case.cls.from_config(opt.get_config())
    assert isinstance(restored.get_config()["learning_rate"], dict)
    assert restored.get_config() == opt.get_config()


@pytest.mark.parametrize("case", CASES)
def test_tf_keras_model_fit_decreases_loss(case):
    tf_keras.utils.set_random_seed(0)
    rng = _rng(5)
    ids = rng.integers(0, 40, size=(64, 4))
    target_table = rng.normal(size=(40,))
    targets = target_table[ids].mean(axis=1, keepdims=True).astype(np.float32)
    model = tf_keras.Sequential(
        [
            tf_keras.layers.Embedding(40, 4),
            tf_keras.layers.GlobalAveragePooling1D(),
            tf_keras.layers.Dense(1),
        ]
    )
    opt = case.make(learning_rate=0.2)
    model.compile(optimizer=opt, loss="mse")
    history = model.fit(ids, targets, batch_size=16, epochs=3, shuffle=False, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0], losses
    assert int(opt.iterations.numpy()) == 12


@pytest.mark.parametrize(
    "cls, kwargs, argument",
    [
        (legacy.SGD, {"learning_rate": -0.1}, "learning_rate"),
        (legacy.SGD, {"lr": -0.1}, "learning_rate"),
        (legacy.Momentum, {"learning_rate": -1.0}, "learning_rate"),
        (legacy.Momentum, {"momentum": 1.0}, "momentum"),
        (legacy.Momentum, {"momentum": -0.1}, "momentum"),
        (legacy.DecayingSGD, {"learning_rate": -1e-3}, "learning_rate"),
        (legacy.DecayingSGD, {"decay_rate": 0.0}, "decay_rate"),
        (legacy.DecayingSGD, {"decay_rate": -0.5}, "decay_rate"),
        (legacy.DecayingSGD, {"decay_rate": 1.01}, "decay_rate"),
    ],
)
def test_invalid_hyperparameters_raise(cls, kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        cls(**kwargs)


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (legacy.SGD, {"learning_rate": 0.0}),
        (legacy.Momentum, {"momentum": 0.0}),
        (legacy.DecayingSGD, {"decay_rate": 1.0}),
    ],
)
def test_boundary_hyperparameters_accepted(cls, kwargs):
    cls(**kwargs)


@pytest.mark.parametrize("case", CASES)
def test_mirrored_matches_single_replica(case, mirrored_strategy):
    """Two replicas, each with half of the global batch, give the one-replica result."""
    rng = _rng(6)
    init = rng.normal(size=(6, 2)).astype(np.float32)
    ids = np.array([[1, 4], [1, 1], [0, 4], [5, 1]])
    weights = rng.normal(size=(4, 2, 2)).astype(np.float32)

    def loss_fn(table, ids_batch, w_batch):
        return tf.reduce_sum(w_batch * tf.gather(table, ids_batch))

    single_var, single_opt = tf.Variable(init), case.make()
    for _ in range(2):
        with tf.GradientTape() as tape:
            loss = loss_fn(single_var, ids, weights)
        single_opt.apply_gradients([(tape.gradient(loss, single_var), single_var)])

    strategy = mirrored_strategy
    with strategy.scope():
        mirrored_var, mirrored_opt = tf.Variable(init), case.make()
    dataset = tf.data.Dataset.from_tensor_slices((ids, weights)).batch(4).repeat(2)

    @tf.function
    def replica_step(ids_batch, w_batch):
        with tf.GradientTape() as tape:
            loss = loss_fn(mirrored_var, ids_batch, w_batch)
        mirrored_opt.apply_gradients([(tape.gradient(loss, mirrored_var), mirrored_var)])

    for ids_batch, w_batch in strategy.experimental_distribute_dataset(dataset):
        strategy.run(replica_step, args=(ids_batch, w_batch))
    assert int(mirrored_opt.iterations.numpy()) == 2
    np.testing.assert_allclose(mirrored_var.numpy(), single_var.numpy(), **TOL)
    for slot_name in mirrored_opt.get_slot_names():
        np.testing.assert_allclose(
            mirrored_opt.get_slot(mirrored_var, slot_name).numpy(),
            single_opt.get_slot(single_var, slot_name).numpy(),
            **TOL,
        )


@pytest.mark.parametrize("case", CASES)
def test_decay_is_a_hyperparameter_in_the_config(case):
    opt = case.make(decay=0.5)
    assert float(opt.decay) == 0.5
    config = opt.get_config()
    assert config["decay"] == 0.5
    assert float(case.cls.from_config(config).decay) == 0.5
    assert float(case.make().decay) == 0.0


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("case", CASES)
def test_decay_matches_numpy_time_inverse_rule(case, sparse):
    # tf_keras's rule: lr_t = lr / (1 + decay * iterations), iterations = steps applied before this one.
    decay, lr = 0.5, 0.1
    rng = _rng(7)
    init = rng.normal(size=(5, 3)).astype(np.float32)
    var, opt = tf.Variable(init), case.make(learning_rate=lr, decay=decay)
    expected, slots = init.astype(np.float64), reference.initial_slots(case.name, init.astype(np.float64))
    for t in range(3):
        indices = np.array([0, 3, 0]) if sparse else np.arange(5)
        values = rng.normal(size=(len(indices), 3)).astype(np.float32)
        grad = _slices(indices, values, 5) if sparse else tf.constant(values)
        opt.apply_gradients([(grad, var)])
        expected, slots = reference.apply_sparse(
            case.step_fn, expected, slots, indices, values.astype(np.float64), lr / (1 + decay * t), t, **case.hyper
        )
    _assert_state(opt, var, expected, slots)
    assert float(opt.decay) == decay


def test_sgd_decay_matches_tf_keras_legacy_sgd():
    rng = _rng(8)
    init = rng.normal(size=(4, 2)).astype(np.float32)
    ours_table, theirs_table = tf.Variable(init), tf.Variable(init)
    ours_bias, theirs_bias = tf.Variable(np.ones(2, np.float32)), tf.Variable(np.ones(2, np.float32))
    ours = legacy.SGD(learning_rate=0.2, decay=0.5)
    theirs = tf_keras.optimizers.legacy.SGD(learning_rate=0.2, decay=0.5)
    for _ in range(4):
        values = rng.normal(size=(3, 2)).astype(np.float32)
        bias_grad = tf.constant(rng.normal(size=2).astype(np.float32))
        ours.apply_gradients([(_slices([1, 3, 1], values, 4), ours_table), (bias_grad, ours_bias)])
        theirs.apply_gradients([(_slices([1, 3, 1], values, 4), theirs_table), (bias_grad, theirs_bias)])
    np.testing.assert_allclose(ours_table.numpy(), theirs_table.numpy(), **TOL)
    np.testing.assert_allclose(ours_bias.numpy(), theirs_bias.numpy(), **TOL)
    assert float(ours.decay) == float(theirs.decay) == 0.5
    assert ours.get_config()["decay"] == theirs.get_config()["decay"]


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"learning_rate": float("inf")}, "learning_rate"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"decay": float("inf")}, "decay"),
        ({"decay": float("nan")}, "decay"),
        ({"clipnorm": float("inf")}, "clipnorm"),
        ({"clipvalue": float("nan")}, "clipvalue"),
    ],
)
def test_nonfinite_hyperparameters_are_refused(kwargs, argument):
    with pytest.raises(ValueError, match=f"{argument} must be a finite number"):
        legacy.SGD(**kwargs)
