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


@pytest.fixture(scope="session")
def mirrored_strategy():
    """The one `MirroredStrategy` over the two logical CPUs for the whole test session.

    Every `MirroredStrategy` made in a process numbers its collective ops from
    the same start, so a second instance's all-reduce or gather can collide
    with the first's ("Collective instance 100 expected type 0 ... but got
    type 2") and abort. Tests share this one instead of making their own.
    """
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    return strategy
