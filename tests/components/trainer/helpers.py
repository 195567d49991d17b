"""Independent references for the trainer tests (no imports from components.trainer)."""

from __future__ import annotations

import glob

import numpy as np
import tensorflow as tf


def rank_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney AUC with average ranks for ties."""
    labels = np.asarray(labels).astype(bool)
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = np.asarray(scores)[order]
    ranks = np.empty(len(scores))
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    pos, neg = labels.sum(), (~labels).sum()
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    p = np.clip(probs, 1e-7, 1 - 1e-7)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def serialized_examples(pattern: str) -> tuple[list[bytes], np.ndarray]:
    """Raw serialized tf.Examples of a split and their labels, read with plain TFRecord I/O."""
    records, labels = [], []
    for path in sorted(glob.glob(pattern)):
        for raw in tf.data.TFRecordDataset(path, compression_type="GZIP"):
            records.append(raw.numpy())
            labels.append(tf.train.Example.FromString(raw.numpy()).features.feature["label"].int64_list.value[0])
    return records, np.asarray(labels, dtype=np.float64)
