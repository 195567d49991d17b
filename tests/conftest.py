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
