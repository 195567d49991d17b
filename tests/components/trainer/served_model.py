"""An exported SavedModel whose outputs depend on every id, made without training (for the serving tests)."""

from __future__ import annotations

import dataclasses
import os
import shutil

import numpy as np
import tensorflow as tf

from components.preprocess.metadata import Metadata
from components.trainer.export import export_saved_model
from components.trainer.fn_args import TrainerConfig
from components.trainer.model import build_model
from tests.components.trainer import raw_logs


@dataclasses.dataclass
class ServedModel:
    mode: str
    vocab: dict[str, list[str]] | None
    metadata: Metadata
    model: object
    export_dir: str
    preprocess_dir: str  # deleted once the model is exported

    def expected(self, lines: list[bytes]) -> np.ndarray:
        """Probabilities [B, 1] of the model on the Python reference features of `lines`."""
        features = raw_logs.reference_batch(lines, self.mode, self.vocab)
        logits = self.model({k: tf.constant(v) for k, v in features.items()}, training=False)
        return tf.sigmoid(tf.cast(logits, tf.float32)).numpy()[:, None]


def export_random_model(root: str, mode: str, negative_counts: str | None = None) -> ServedModel:
    """A small DLRM with N(0, 0.5) table rows (the trained init is near 0, so every id would score alike), exported
    from a preprocess dir written by hand, which is then deleted: the SavedModel must stand alone.
    `negative_counts` is the policy recorded in its metadata (None: metadata from before the policy, "reject")."""
    lines = raw_logs.good_lines()
    vocab = None if mode == "hash" else raw_logs.vocabularies(lines)
    preprocess_dir = os.path.join(root, "preprocess")
    metadata = raw_logs.write_preprocess_dir(preprocess_dir, mode, vocab, negative_counts)
    model = build_model(metadata, TrainerConfig(embedding_dim=4, bottom_mlp=(8,), top_mlp=(8,)))
    rng = np.random.default_rng(0)
    for table in model.tables:
        table.embeddings.assign(rng.normal(0.0, 0.5, table.embeddings.shape).astype(np.float32))
    export_dir = export_saved_model(model, metadata, os.path.join(root, "serving"), preprocess_dir)
    shutil.rmtree(preprocess_dir)
    return ServedModel(mode, vocab, metadata, model, export_dir, preprocess_dir)
