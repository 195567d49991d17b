"""SavedModel export: the model plus the preprocessing, so that clients send raw logs.

Three signatures, each returning {"probabilities": float32 [B, 1]}:

  serving_default(examples)    serialized raw tf.Examples: I1..I13 int64 and
                               C1..C26 bytes, 0 or 1 values each (absent or
                               empty = missing); a label is ignored
  serve_tsv(lines)             raw Criteo TSV lines: 40 fields (label first,
                               ignored) or 39 (no label, as in the test logs)
  serve_transformed(examples)  the preprocess output's tf.Examples (dense,
                               cat_0..cat_25), what a TFX Transform would feed

The raw signatures apply components/trainer/raw_features.py (log1p counts,
hashing or vocabulary lookup, OOV id 0); vocabulary files travel as assets.
A malformed input raises tf.errors.InvalidArgumentError naming the problem.

The signatures are traced with embedopt's fused kernels off
(`optimizers.fast_path.disabled()`): the SavedModel holds TensorFlow's own
ops only, so TF Serving, `tf.saved_model.load` and any other process load it
without embedopt's kernel library.

The SavedModel is written into a staging folder beside `export_dir` and
renamed into place when complete (components/staging.py): a failed, refused
or killed export never leaves files inside `export_dir`, an earlier export
there stays whole until the new one replaces it, and the next export
removes what a killed one left beside it.
"""

from __future__ import annotations

import tensorflow as tf

from components import staging
from components.preprocess.metadata import Metadata
from components.preprocess.reader import parse_serialized
from components.trainer.raw_features import RawFeatureTransform
from optimizers import fast_path

SERVING_DEFAULT = "serving_default"
SERVE_TSV = "serve_tsv"
SERVE_TRANSFORMED = "serve_transformed"
EXAMPLES_INPUT = "examples"
LINES_INPUT = "lines"
OUTPUT_NAME = "probabilities"


class ServingModule(tf.Module):
    """The model and the raw-log transformation, with one tf.function per signature."""

    def __init__(self, model, metadata: Metadata, raw_features: RawFeatureTransform):
        super().__init__(name="dlrm_serving")
        self.model = model
        self.raw_features = raw_features
        self._metadata = metadata

    def _probabilities(self, features):
        logits = tf.cast(self.model(features, training=False), tf.float32)
        return {OUTPUT_NAME: tf.sigmoid(logits)[:, None]}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])
    def serve_raw_examples(self, examples):
        return self._probabilities(self.raw_features.from_examples(examples))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=LINES_INPUT)])
    def serve_tsv(self, lines):
        return self._probabilities(self.raw_features.from_tsv(lines))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])
    def serve_transformed(self, examples):
        return self._probabilities(parse_serialized(examples, self._metadata))


def export_saved_model(model, metadata: Metadata, export_dir: str, preprocess_dir: str | None) -> str:
    """Writes the SavedModel to `export_dir` (staged, see the module docstring) and returns it.

    `preprocess_dir` is the preprocess output directory (the one holding
    metadata.json and vocab/); the vocabulary modes read their files from it.
    Raises ValueError when the metadata and the vocabulary files disagree.
    """
    module = ServingModule(model, metadata, RawFeatureTransform(metadata, preprocess_dir))
    signatures = {
        SERVING_DEFAULT: module.serve_raw_examples,
        SERVE_TSV: module.serve_tsv,
        SERVE_TRANSFORMED: module.serve_transformed,
    }
    with staging.staged_directory(export_dir) as folder, fast_path.disabled():
        tf.saved_model.save(module, folder, signatures=signatures)
    return export_dir
