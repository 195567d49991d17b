"""DynamicEmbedding: admission, LRU/LFU eviction, slot reset, int64 keys, defaults, saving; against a NumPy model."""

from __future__ import annotations

import contextlib

import keras
import numpy as np
import pytest
import tensorflow as tf

import optimizers
from optimizers.dynamic import DynamicEmbedding
from tests.optimizers.dynamic_reference import ReferenceTable

INT64_MIN, INT64_MAX = np.iinfo(np.int64).min, np.iinfo(np.int64).max


def _stream(seed, steps, batch, universe, zipf=None):
    """Batches of int64 keys drawn from `universe` (skewed when `zipf` is set), with repeats."""
    rng = np.random.default_rng(seed)
    p = None
    if zipf:
        p = 1.0 / np.arange(1, len(universe) + 1) ** zipf
        p /= p.sum()
    return [rng.choice(universe, size=batch, p=p).astype(np.int64) for _ in range(steps)]


def _layer_rows(layer, keys):
    return tf.reshape(layer.key_to_row.lookup(tf.constant(np.asarray(keys), tf.int64)), [-1]).numpy()


def _check_state(layer, ref):
    used = len(ref.key_of)
    assert layer.counters() == {"rows_in_use": used, "admissions": ref.admissions, "evictions": ref.evictions,
                                "default_lookups": ref.default_lookups, "lookups": ref.lookups, "steps": ref.step}
    np.testing.assert_array_equal(layer.row_keys.numpy()[:used], [ref.key_of[r] for r in range(used)])
    np.testing.assert_array_equal(layer.row_stamps.numpy()[:used], ref.stamp[:used])
    if layer.lfu_last_seen is not None:
        np.testing.assert_array_equal(layer.lfu_last_seen.numpy()[:used], ref.last_seen[:used])
    assert sorted(layer.assigned_rows.numpy()[:int(layer.num_assigned.numpy())]) == sorted(ref.assigned)
    exported_keys, exported_rows = (t.numpy() for t in layer.key_to_row.export())
    assert dict(zip(exported_keys.tolist(), exported_rows.tolist())) == ref.row_of


@pytest.mark.parametrize("eviction", ["lru", "lfu"])
@pytest.mark.parametrize("admit_after", [1, 3])
def test_admission_and_eviction_match_reference(eviction, admit_after):
    universe = np.arange(-60, 60, dtype=np.int64) * 7919
    layer = DynamicEmbedding(4, capacity=24, admit_after=admit_after, eviction=eviction, sketch_width=2**12)
    ref = ReferenceTable(24, admit_after=admit_after, eviction=eviction, sketch_width=2**12)
    step = tf.function(lambda k: layer(k, training=True))
    for keys in _stream(1, 30, 40, universe, zipf=1.1):
        step(tf.constant(keys))
        expected = ref.train(keys)
        np.testing.assert_array_equal(_layer_rows(layer, keys), expected)
        _check_state(layer, ref)
    if admit_after > 1:
        np.testing.assert_array_equal(layer.sketch.numpy(), ref.sketch)
    assert ref.evictions > 0 and ref.default_lookups > 0  # the stream exercised both policies


@pytest.mark.parametrize("decay_every", [2, 5])
def test_sketch_decay_matches_reference(decay_every):
    # admit_after 3 and halving every 2 steps: a key must come back often within a few steps to get a row.
    universe = np.arange(1, 80, dtype=np.int64) * 15485863
    layer = DynamicEmbedding(2, capacity=16, admit_after=3, sketch_width=2**8, sketch_decay_every=decay_every)
    ref = ReferenceTable(16, admit_after=3, sketch_width=2**8, sketch_decay_every=decay_every)
    plain = ReferenceTable(16, admit_after=3, sketch_width=2**8)
    step = tf.function(lambda k: layer(k, training=True))
    for keys in _stream(9, 20, 24, universe, zipf=0.6):
        step(tf.constant(keys))
        np.testing.assert_array_equal(_layer_rows(layer, keys), ref.train(keys))
        plain.train(keys)
        _check_state(layer, ref)
        np.testing.assert_array_equal(layer.sketch.numpy(), ref.sketch)
    assert ref.admissions < plain.admissions  # the decay held keys back: the test is not a no-op


@pytest.mark.parametrize("eviction, expected_victims", [("lru", [2, 0]), ("lfu", [2, 1])])
def test_eviction_order_small_example(eviction, expected_victims):
    # Rows: a -> 0, b -> 1, c -> 2. Then a twice more (a: newest, count 3), b at step 3 (count 2), c untouched.
    layer = DynamicEmbedding(2, capacity=3, eviction=eviction)
    a, b, c, d, e = 10, 20, 30, 40, 50
    for keys in ([a, b, c], [a, a], [b]):
        layer(tf.constant(keys, tf.int64), training=True)
    # LRU stamps a=2, b=3, c=1 -> order c (row 2), a (row 0), b; LFU counts a=3, b=2, c=1 -> c, b (row 1), a.
    # This batch reads b, so b's row is protected: both policies then take c's row, then a's.
    layer(tf.constant([b, d, e], tf.int64), training=True)
    # The batch reads b, so b keeps row 1 and d, e take c's row (2) then a's row (0) under both policies.
    np.testing.assert_array_equal(_layer_rows(layer, [d, e, b, a, c]), [2, 0, 1, -1, -1])
    # A batch that reads no resident key shows the plain order: LRU c, a; LFU c, b.
    layer2 = DynamicEmbedding(2, capacity=3, eviction=eviction)
    for keys in ([a, b, c], [a, a], [b]):
        layer2(tf.constant(keys, tf.int64), training=True)
    layer2(tf.constant([d, e], tf.int64), training=True)
    ref = ReferenceTable(3, eviction=eviction)
    for keys in ([a, b, c], [a, a], [b], [d, e]):
        ref.train(keys)
    assert ref.assigned == expected_victims
    assert layer2.assigned_rows.numpy()[:2].tolist() == expected_victims


@pytest.mark.parametrize("kernels", ["on", "off"])
def test_lfu_ties_go_to_the_row_seen_least_recently(kernels):
    # Rows a -> 0, b -> 1, c -> 2 at step 1 (count 1 each); b is read at step 2 and a at step 3 (count 2 each).
    # Two newcomers then take c's row (count 1), then b's: b ties with a on count 2 but was seen earlier, though
    # a holds the lower row.
    from optimizers import fast_path

    a, b, c, d, e = 10, 20, 30, 40, 50
    context = fast_path.disabled() if kernels == "off" else contextlib.nullcontext()
    with context:
        layer = DynamicEmbedding(2, capacity=3, eviction="lfu")
        step = tf.function(lambda k: layer(k, training=True))
        for keys in ([a, b, c], [b], [a], [d, e]):
            step(tf.constant(keys, tf.int64))
    ref = ReferenceTable(3, eviction="lfu")
    for keys in ([a, b, c], [b], [a], [d, e]):
        ref.train(keys)
    assert ref.assigned == [2, 1]  # the order by (count, row) alone would take rows 2 and 0
    assert layer.assigned_rows.numpy()[:2].tolist() == [2, 1]
    np.testing.assert_array_equal(layer.lfu_last_seen.numpy(), [3, 4, 4])
    np.testing.assert_array_equal(_layer_rows(layer, [a, b, c, d, e]), [0, -1, -1, 2, 1])


def test_int64_extremes_are_distinct_keys():
    keys = np.array([INT64_MIN, INT64_MAX, -1, 0, 1, INT64_MIN + 1, INT64_MAX - 1], np.int64)
    layer = DynamicEmbedding(3, capacity=16, admit_after=2, sketch_width=2**10)
    ref = ReferenceTable(16, admit_after=2, sketch_width=2**10)
    for batch in (keys[:4], keys, keys[::-1]):
        layer(tf.constant(batch), training=True)
        np.testing.assert_array_equal(_layer_rows(layer, batch), ref.train(batch))
    np.testing.assert_array_equal(layer.sketch.numpy(), ref.sketch)
    rows = _layer_rows(layer, keys)
    assert (rows >= 0).all() and len(set(rows.tolist())) == len(keys)
    out = layer(tf.constant(keys[None, :]), training=False).numpy()[0]
    np.testing.assert_array_equal(out, layer.embeddings.numpy()[rows])


@pytest.mark.parametrize("default", ["zeros", "shared_row"])
def test_unadmitted_keys_read_the_default_and_update_no_key_row(default):
    layer = DynamicEmbedding(3, capacity=8, admit_after=2, default=default)
    layer(tf.constant([1, 2, 2], tf.int64), training=True)  # 2 is admitted (seen twice), 1 is not
    if default == "shared_row":
        layer.default_row.assign([[0.5, -1.0, 2.0]])
    keys = tf.constant([1, 3, 2, 1], tf.int64)  # 1 seen twice now: admitted; 3 not
    with tf.GradientTape() as tape:
        out = layer(keys, training=True)
        loss = tf.reduce_sum(out)
    grads = dict(zip([v.name for v in layer.trainable_variables], tape.gradient(loss, layer.trainable_variables)))
    rows = _layer_rows(layer, [1, 3, 2])
    assert rows[1] == -1 and rows[0] >= 0 and rows[2] >= 0
    default_value = np.zeros(3) if default == "zeros" else np.array([0.5, -1.0, 2.0])
    np.testing.assert_array_equal(out.numpy()[1], default_value)
    table_grad = grads["embeddings"]
    assert isinstance(table_grad, tf.IndexedSlices)
    assert sorted(table_grad.indices.numpy().tolist()) == sorted([rows[0], rows[2]])
    dense = tf.convert_to_tensor(table_grad).numpy()
    np.testing.assert_array_equal(dense[rows[0]], np.full(3, 2.0))  # key 1 read twice
    if default == "shared_row":
        np.testing.assert_array_equal(tf.convert_to_tensor(grads["default_row"]).numpy(), np.ones((1, 3)))
    assert layer.counters()["default_lookups"] == 1 + 1  # key 1 in the first batch, key 3 in the second


def test_serving_reads_without_changing_state():
    layer = DynamicEmbedding(2, capacity=4)
    layer(tf.constant([5, 6], tf.int64), training=True)
    before = [v.numpy().copy() for v in layer.weights]
    out = layer(tf.constant([5, 99], tf.int64), training=False).numpy()
    for b, v in zip(before, layer.weights):
        np.testing.assert_array_equal(b, v.numpy())
    np.testing.assert_array_equal(out[0], layer.embeddings.numpy()[_layer_rows(layer, [5])[0]])
    np.testing.assert_array_equal(out[1], np.zeros(2))


# -- optimizers and slot reset ----------------------------------------------------------------------------------------

def _numpy_rule(name, lr):
    eps, b1, b2 = 1e-7, 0.9, 0.999
    if name == "sgd":
        return optimizers.SGD(lr), (lambda: {}), (lambda w, s, g, t: (w - lr * g, s))
    if name == "adagrad":
        def adagrad(w, s, g, t):
            acc = s["acc"] + g * g
            return w - lr * g / np.sqrt(acc + eps), {"acc": acc}
        return optimizers.Adagrad(lr, initial_accumulator_value=0.1, epsilon=eps), (lambda: {"acc": 0.1}), adagrad

    def lazy_adam(w, s, g, t):
        m = s["m"] + (1 - b1) * (g - s["m"])
        v = s["v"] + (1 - b2) * (g * g - s["v"])
        step = lr * np.sqrt(1 - b2 ** (t + 1)) / (1 - b1 ** (t + 1))
        return w - step * m / (np.sqrt(v) + eps), {"m": m, "v": v}
    return optimizers.LazyAdam(lr, beta_1=b1, beta_2=b2, epsilon=eps), (lambda: {"m": 0.0, "v": 0.0}), lazy_adam


@pytest.mark.parametrize("opt_name", ["sgd", "adagrad", "lazy_adam"])
@pytest.mark.parametrize("eviction", ["lru", "lfu"])
def test_training_with_slot_reset_matches_numpy(opt_name, eviction):
    dim, capacity, lr = 3, 10, 0.05
    layer = DynamicEmbedding(dim, capacity=capacity, admit_after=2, eviction=eviction,
                             embeddings_initializer="zeros", sketch_width=2**12)
    optimizer, fresh_state, rule = _numpy_rule(opt_name, lr)
    ref = ReferenceTable(capacity, admit_after=2, eviction=eviction, sketch_width=2**12)
    weights = np.zeros((capacity, dim))
    slot_state = [fresh_state() for _ in range(capacity)]
    rng = np.random.default_rng(3)
    for t, keys in enumerate(_stream(5, 25, 12, np.arange(30, dtype=np.int64) * 1_000_003, zipf=0.8)):
        coef = rng.normal(size=(len(keys), dim))
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(tf.constant(keys), training=True) * coef)
        grads = tape.gradient(loss, layer.trainable_variables)
        layer.reset_slots(optimizer)
        optimizer.apply_gradients(zip(grads, layer.trainable_variables))

        rows = ref.train(keys)
        for r in ref.assigned:  # a (re)assigned row starts from zeros and fresh slots
            weights[r] = 0.0
            slot_state[r] = fresh_state()
        for r in sorted(set(rows[rows >= 0].tolist())):
            g = coef[rows == r].sum(axis=0)
            weights[r], slot_state[r] = rule(weights[r], slot_state[r], g, t)
        np.testing.assert_allclose(layer.embeddings.numpy(), weights, rtol=1e-5, atol=1e-6)
    assert ref.evictions > 0


def test_reset_slots_restores_initial_values_on_reassigned_rows():
    layer = DynamicEmbedding(2, capacity=2)
    optimizer = optimizers.Adagrad(0.1, initial_accumulator_value=0.25)
    for keys in ([1, 2], [3]):  # the second batch evicts key 1's row (row 0, least recent)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(tf.constant(keys, tf.int64), training=True))
        grads = tape.gradient(loss, layer.trainable_variables)
        accumulator_before = (optimizer.get_slot(layer.embeddings, "accumulator").numpy().copy()
                              if optimizer.built else None)
        layer.reset_slots(optimizer)
        optimizer.apply_gradients(zip(grads, layer.trainable_variables))
    accumulator = optimizer.get_slot(layer.embeddings, "accumulator").numpy()
    assert accumulator_before[0, 0] == pytest.approx(0.25 + 1.0)  # key 1's history, before the reset
    np.testing.assert_allclose(accumulator[0], 0.25 + 1.0, rtol=1e-6)  # reset to 0.25, then one g=1 step
    np.testing.assert_allclose(accumulator[1], 0.25 + 1.0, rtol=1e-6)  # key 2, untouched by the reset


# -- determinism, checkpoints, .keras -----------------------------------------------------------------------------------

def _run(layer, optimizer, batches, coef_seed):
    rng = np.random.default_rng(coef_seed)
    step = tf.function(lambda k, c: _train_step(layer, optimizer, k, c))
    for keys in batches:
        step(tf.constant(keys), tf.constant(rng.normal(size=(len(keys), layer.output_dim)), tf.float32))


def _train_step(layer, optimizer, keys, coef):
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(keys, training=True) * coef)
    grads = tape.gradient(loss, layer.trainable_variables)
    layer.reset_slots(optimizer)
    optimizer.apply_gradients(zip(grads, layer.trainable_variables))


def _snapshot(layer, optimizer):
    keys, rows = (t.numpy() for t in layer.key_to_row.export())
    order = np.argsort(keys)
    return ([v.numpy() for v in layer.weights] + [v.numpy() for v in optimizer.variables]
            + [keys[order], rows[order]])


def _fresh(seed=7, eviction="lru"):
    layer = DynamicEmbedding(4, capacity=16, admit_after=2, eviction=eviction, default="shared_row",
                             sketch_width=2**10, seed=seed)
    layer.build()
    optimizer = optimizers.LazyAdam(0.01)
    optimizer.build(layer.trainable_variables)
    return layer, optimizer


def test_same_stream_gives_same_state():
    batches = _stream(11, 12, 20, np.arange(-40, 40, dtype=np.int64) * (2**40 + 3), zipf=0.9)
    first, second = _fresh(), _fresh()
    _run(*first, batches, 0)
    _run(*second, batches, 0)
    for a, b in zip(_snapshot(*first), _snapshot(*second)):
        np.testing.assert_array_equal(a, b)
    assert first[0].counters()["evictions"] > 0


@pytest.mark.parametrize("eviction", ["lru", "lfu"])
def test_checkpoint_round_trip_mid_stream(tmp_path, eviction):
    batches = _stream(12, 16, 20, np.arange(-40, 40, dtype=np.int64) * (2**40 + 3), zipf=0.9)
    layer, optimizer = _fresh(eviction=eviction)
    _run(layer, optimizer, batches[:8], 0)
    path = tf.train.Checkpoint(layer=layer, optimizer=optimizer).write(str(tmp_path / "ckpt"))
    _run(layer, optimizer, batches[8:], 1)

    restored, restored_opt = _fresh(seed=7, eviction=eviction)
    _run(restored, restored_opt, batches[:3], 5)  # different state, overwritten by the restore
    tf.train.Checkpoint(layer=restored, optimizer=restored_opt).read(path).assert_consumed()
    _run(restored, restored_opt, batches[8:], 1)
    for a, b in zip(_snapshot(layer, optimizer), _snapshot(restored, restored_opt)):
        np.testing.assert_array_equal(a, b)
    assert layer.counters()["evictions"] > 0


def test_keras_file_round_trip(tmp_path):
    inputs = keras.Input(shape=(3,), dtype="int64")
    model = keras.Model(inputs, DynamicEmbedding(4, capacity=8, admit_after=1, name="dyn")(inputs))
    layer = model.get_layer("dyn")
    for keys in ([[1, 2, INT64_MIN]], [[4, 5, 6]], [[7, 8, INT64_MAX]]):  # 9 keys, 8 rows: one eviction
        model(tf.constant(keys, tf.int64), training=True)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    probe = tf.constant([[INT64_MAX, 2, 1], [INT64_MIN, 77, 8]], tf.int64)
    np.testing.assert_array_equal(loaded(probe, training=False).numpy(), model(probe, training=False).numpy())
    loaded_layer = loaded.get_layer("dyn")
    assert loaded_layer.counters() == layer.counters() and layer.counters()["evictions"] == 1
    np.testing.assert_array_equal(_layer_rows(loaded_layer, [1, 2, INT64_MIN, 4, 5, 6, 7, 8, INT64_MAX]),
                                  _layer_rows(layer, [1, 2, INT64_MIN, 4, 5, 6, 7, 8, INT64_MAX]))


def test_lfu_keras_file_from_before_last_seen_loads_with_zeros(tmp_path, monkeypatch):
    inputs = keras.Input(shape=(3,), dtype="int64")
    model = keras.Model(inputs, DynamicEmbedding(4, capacity=4, eviction="lfu", name="dyn")(inputs))
    layer = model.get_layer("dyn")
    for keys in ([[1, 2, 3]], [[1, 4, 5]]):  # 5 keys, 4 rows: one eviction
        model(tf.constant(keys, tf.int64), training=True)
    assert layer.weights[-1] is layer.lfu_last_seen  # so that older files hold every variable but the last

    def save_without_last_seen(self, store):  # what an LFU table saved before it kept last_seen
        for i, variable in enumerate(self.weights[:-1]):
            store[str(i)] = variable

    monkeypatch.setattr(DynamicEmbedding, "save_own_variables", save_without_last_seen)
    model.save(tmp_path / "old.keras")
    monkeypatch.undo()
    loaded = keras.saving.load_model(tmp_path / "old.keras").get_layer("dyn")
    np.testing.assert_array_equal(loaded.lfu_last_seen.numpy(), 0)
    for mine, theirs in zip(loaded.weights[:-1], layer.weights[:-1]):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    assert loaded.counters() == layer.counters() and layer.counters()["evictions"] == 1
    np.testing.assert_array_equal(_layer_rows(loaded, [1, 2, 3, 4, 5]), _layer_rows(layer, [1, 2, 3, 4, 5]))


@pytest.mark.parametrize("kwargs, match", [
    ({"capacity": 0}, "capacity"), ({"admit_after": 0}, "admit_after"), ({"eviction": "fifo"}, "eviction"),
    ({"default": "mean"}, "default"), ({"sketch_width": 1000}, "power of 2"),
    ({"sketch_decay_every": -1}, "sketch_decay_every"),
])
def test_bad_arguments_raise(kwargs, match):
    args = {"output_dim": 2, "capacity": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        DynamicEmbedding(**args)


def test_config_round_trip():
    layer = DynamicEmbedding(5, capacity=9, admit_after=3, eviction="lfu", default="shared_row", seed=4,
                             sketch_decay_every=7)
    clone = DynamicEmbedding.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


# -- speed-path internals: the LRU log and the lookup gradient --------------------------------------------------------

def test_lru_log_builds_wraps_and_compacts_matching_reference():
    # Capacity 6 (a ring of 12 entries). Phase 1, a long tail: the log is built at the first eviction and wraps
    # around the ring. Phase 2, four of five hot keys per step and a new key every fourth step: few evictions and
    # many reads, so dead entries pile up and the log is compacted. Every step must evict in the reference's order.
    rng = np.random.default_rng(4)
    tail_phase = _stream(4, 25, 9, np.arange(1, 41, dtype=np.int64) * -104729, zipf=0.7)
    hot_phase = [np.concatenate([rng.choice(5, 4, replace=False) + 1, [10_000 + t] if t % 4 == 0 else []])
                 .astype(np.int64) for t in range(40)]
    layer = DynamicEmbedding(2, capacity=6, eviction="lru")
    ref = ReferenceTable(6, eviction="lru")
    step = tf.function(lambda k: layer(k, training=True))
    tails = []
    for keys in tail_phase + hot_phase:
        step(tf.constant(keys))
        np.testing.assert_array_equal(_layer_rows(layer, keys), ref.train(keys))
        _check_state(layer, ref)
        tails.append(int(layer.lru_log.tail.numpy()))
    assert tails[0] == 0 and ref.evictions > 20  # no log before the first eviction
    assert max(tails) > layer.lru_log.size  # positions ran past the ring's end (wrapped)
    assert any(b < a for a, b in zip(tails, tails[1:]))  # a compaction moved the tail back


@pytest.mark.parametrize("kernels", ["on", "off"])
def test_lookup_gradient_sums_each_resident_key_once(kernels):
    from optimizers import fast_path

    layer = DynamicEmbedding(3, capacity=4, admit_after=1, default="shared_row")
    layer(tf.constant([7, 8, 9], tf.int64), training=True)
    layer(tf.constant([10, 11], tf.int64), training=True)  # capacity 4: 11 evicts the least recent (7)
    keys = np.array([[8, 11, 8], [7, 9, 8]], np.int64)  # 7 is not resident any more
    coef = np.arange(18, dtype=np.float32).reshape(2, 3, 3)
    context = fast_path.disabled() if kernels == "off" else contextlib.nullcontext()
    with context:
        @tf.function
        def grads(k, c):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(layer(k, training=False) * c)
            return tape.gradient(loss, [layer.embeddings, layer.default_row])

        table_grad, default_grad = grads(tf.constant(keys), tf.constant(coef))
    rows = dict(zip([8, 9, 11], _layer_rows(layer, [8, 9, 11]).tolist()))
    assert _layer_rows(layer, [7])[0] == -1
    expected = {rows[8]: coef[0, 0] + coef[0, 2] + coef[1, 2], rows[11]: coef[0, 1], rows[9]: coef[1, 1]}
    assert isinstance(table_grad, tf.IndexedSlices)
    indices = table_grad.indices.numpy().tolist()
    assert sorted(indices) == sorted(expected)  # one entry per distinct resident key
    for i, row in enumerate(indices):
        np.testing.assert_allclose(table_grad.values.numpy()[i], expected[row], rtol=0, atol=0)
    np.testing.assert_allclose(tf.convert_to_tensor(default_grad).numpy(), coef[1, 0][None, :], rtol=0, atol=0)


# -- replicas ---------------------------------------------------------------------------------------------------------

def _replicated_run(strategy, batches, coefs, eviction, make_layer=None):
    """Trains a fresh table under `strategy` on global batches split evenly over its replicas; returns the layer.

    The table: `make_layer(eviction)`, by default a `DynamicEmbedding` of 12 rows."""
    replicas = strategy.num_replicas_in_sync
    with strategy.scope():
        layer = (make_layer(eviction) if make_layer else
                 DynamicEmbedding(3, capacity=12, admit_after=2, eviction=eviction, default="shared_row",
                                  sketch_width=2**10, seed=3))
        layer.build()
        optimizer = optimizers.LazyAdam(0.05)
        optimizer.build(layer.trainable_variables)

    def replica_step(keys, coef):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(keys, training=True) * coef)
        grads = tape.gradient(loss, layer.trainable_variables)
        layer.reset_slots(optimizer)
        optimizer.apply_gradients(zip(grads, layer.trainable_variables))

    @tf.function
    def step(keys, coef):
        split = [strategy.experimental_distribute_values_from_function(
            lambda ctx, x=x: tf.split(x, replicas)[ctx.replica_id_in_sync_group]) for x in (keys, coef)]
        strategy.run(replica_step, args=tuple(split))

    for keys, coef in zip(batches, coefs):
        step(tf.constant(keys), tf.constant(coef))
    return layer, optimizer


def replicated_stream():
    """The global batches (16 keys of 60, Zipf) and loss weights of the replica tests."""
    batches = _stream(21, 14, 16, np.arange(-30, 30, dtype=np.int64) * (2**50 + 7), zipf=0.9)
    rng = np.random.default_rng(2)
    return batches, [rng.normal(size=(16, 3)).astype(np.float32) for _ in batches]


@pytest.mark.parametrize("eviction", ["lru", "lfu"])
def test_mirrored_matches_single_replica(eviction, mirrored_strategy):
    batches, coefs = replicated_stream()
    two, two_opt = _replicated_run(mirrored_strategy, batches, coefs, eviction)
    one, one_opt = _replicated_run(tf.distribute.get_strategy(), batches, coefs, eviction)
    ref = ReferenceTable(12, admit_after=2, eviction=eviction, sketch_width=2**10)
    for keys in batches:
        ref.train(keys)
    _check_state(two, ref)  # the global batch's policy: same keys admitted, same order, same rows
    _check_state(one, ref)
    assert ref.evictions > 0
    for variable, single in zip(two.weights, one.weights):
        copies = mirrored_strategy.experimental_local_results(variable.value)
        assert len(copies) == 2
        for copy in copies:  # state written once for both replicas: exact; weights: summed gradients, 1e-6
            if variable.dtype == "int64":
                np.testing.assert_array_equal(copy.numpy(), single.numpy())
            else:
                np.testing.assert_allclose(copy.numpy(), single.numpy(), rtol=1e-5, atol=1e-6)
    for name in ("m", "v"):
        copies = mirrored_strategy.experimental_local_results(two_opt.get_slot(two.embeddings, name).value)
        for copy in copies:
            np.testing.assert_allclose(copy.numpy(), one_opt.get_slot(one.embeddings, name).numpy(),
                                       rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernels", ["on", "off"])
@pytest.mark.parametrize("case", ["default_read", "no_default", "unread_entries"])
def test_gather_resident_gradient_matches_numpy(kernels, case):
    from optimizers import fast_path
    from optimizers.dynamic_ops import gather_resident

    rng = np.random.default_rng(8)
    table = tf.Variable(rng.normal(size=(10, 3)).astype(np.float32))
    default = tf.constant(rng.normal(size=(1, 3)).astype(np.float32))
    rows = np.array([4, -1, 7, 0, 9], np.int64)  # distinct keys' rows; -1 reads the default
    position = {"default_read": [0, 1, 2, 3, 4, 0, 2, 1], "no_default": [0, 2, 3, 4, 0, 2, 3],
                "unread_entries": [2, 2, 4, 1]}[case]  # the last skips the keys of rows 4 and 0
    upstream = rng.normal(size=(len(position), 3)).astype(np.float32)
    context = fast_path.disabled() if kernels == "off" else contextlib.nullcontext()
    with context:
        @tf.function
        def run():
            with tf.GradientTape() as tape:
                tape.watch(default)
                out = gather_resident(table, default, tf.constant(rows), tf.constant(position, tf.int32))
                loss = tf.reduce_sum(out * upstream)
            return out, tape.gradient(loss, [table, default])

        out, (table_grad, default_grad) = run()
    key_rows = rows[position]
    expected_out = np.where((key_rows >= 0)[:, None], table.numpy()[np.maximum(key_rows, 0)], default.numpy())
    np.testing.assert_array_equal(out.numpy(), expected_out)
    dense = np.zeros((10, 3), np.float32)
    np.add.at(dense, key_rows[key_rows >= 0], upstream[key_rows >= 0])
    np.testing.assert_allclose(tf.convert_to_tensor(table_grad).numpy(), dense, rtol=1e-6, atol=1e-6)
    # One entry per distinct resident key; a key that `position` never reads (not so after tf.unique) gets zeros.
    assert sorted(table_grad.indices.numpy().tolist()) == sorted(rows[rows >= 0].tolist())
    np.testing.assert_allclose(tf.convert_to_tensor(default_grad).numpy()[0], upstream[key_rows < 0].sum(axis=0),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("eviction", ["lru", "lfu"])
def test_two_workers_hold_the_table_of_one_replica_on_the_global_batch(eviction, tmp_path):
    """MultiWorkerMirroredStrategy, 2 real processes: each worker's table equals one replica's on the global
    batch (state exactly, rows and slots 1e-5), and the policy is the NumPy reference's."""
    from tests.optimizers.worker_processes import run_workers

    run_workers("tests.optimizers.dynamic_worker", 2, str(tmp_path), eviction, timeout=300)
    batches, coefs = replicated_stream()
    one, one_opt = _replicated_run(tf.distribute.get_strategy(), batches, coefs, eviction)
    ref = ReferenceTable(12, admit_after=2, eviction=eviction, sketch_width=2**10)
    for keys in batches:
        ref.train(keys)
    _check_state(one, ref)
    assert ref.evictions > 0
    counters = one.counters()
    for worker in range(2):
        got = np.load(tmp_path / f"{eviction}-worker{worker}.npz")
        np.testing.assert_array_equal(got["counters"], [counters[k] for k in sorted(counters)])
        assert dict(zip(got["hash_keys"].tolist(), got["hash_rows"].tolist())) == ref.row_of
        for i, variable in enumerate(one.weights):
            want = variable.numpy()
            if variable.dtype == "int64":
                np.testing.assert_array_equal(got[f"var{i}"], want, err_msg=variable.path)
            else:
                np.testing.assert_allclose(got[f"var{i}"], want, rtol=1e-5, atol=1e-6, err_msg=variable.path)
        for name in ("m", "v"):
            np.testing.assert_allclose(got["slot:" + name], one_opt.get_slot(one.embeddings, name).numpy(),
                                       rtol=1e-5, atol=1e-6)
