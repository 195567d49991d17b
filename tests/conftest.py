"""Shared test set-up.

Two logical CPU devices are configured before TensorFlow initialises its
runtime, so `tf.distribute.MirroredStrategy` tests can run on a CPU-only
machine. This must happen before any test touches a device.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_collective_keys():
    """Gives every `MirroredStrategy` made during a test its own collective-key range.

    Each `MirroredStrategy` numbers its collective ops from
    `MirroredStrategy._collective_key_base` (TensorFlow's hook for tests), so
    two instances in one process would reuse the same keys and abort each
    other's all-reduce ("Collective instance 100 expected type 0 ... but got
    type 2"). Trainer tests make their own strategies through `run_fn`.
    """
    tf.distribute.MirroredStrategy._collective_key_base += 100_000
    yield


@pytest.fixture(scope="session")
def mirrored_strategy():
    """One `MirroredStrategy` over the two logical CPUs, shared by the optimizer tests.

    A session fixture is set up before the test's own fixtures, so it takes a
    key range of its own here rather than the previous test's.
    """
    tf.distribute.MirroredStrategy._collective_key_base += 100_000
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    return strategy
