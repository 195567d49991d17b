"""SavedModel export with a TFX-style `serving_default` signature.

The signature takes a batch of serialized `tf.Example` strings (the
preprocess output format, label optional) and returns
{"probabilities": float32 [B, 1]}, like a TFX Trainer's exported model.
"""

from __future__ import annotations

import tensorflow as tf

from components.preprocess.metadata import Metadata
from components.preprocess.reader import parse_serialized

SIGNATURE_KEY = "serving_default"
INPUT_NAME = "examples"
OUTPUT_NAME = "probabilities"


class ServingModule(tf.Module):
    def __init__(self, model, metadata: Metadata):
        super().__init__(name="dlrm_serving")
        self.model = model
        self._metadata = metadata

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_NAME)])
    def serve(self, examples):
        features = parse_serialized(examples, self._metadata)
        logits = tf.cast(self.model(features, training=False), tf.float32)
        return {OUTPUT_NAME: tf.sigmoid(logits)[:, None]}


def export_saved_model(model, metadata: Metadata, export_dir: str) -> str:
    """Writes the SavedModel to `export_dir` and returns it."""
    module = ServingModule(model, metadata)
    tf.saved_model.save(module, export_dir, signatures={SIGNATURE_KEY: module.serve})
    return export_dir
