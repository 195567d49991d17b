"""Bag (multi-hot) fields of raw logs -> ragged ids, in TensorFlow ops: the serving side of
components/preprocess/bags.py.

A bag field's elements (split at the separator from a TSV field, or the
bytes_list values of a raw tf.Example feature) are stripped (str.strip()),
empty ones dropped, the first `cap` kept, and each element gets its id by
the feature's rule (hash bucket or vocabulary line; OOV 0 stays in the bag).
The result is a tf.RaggedTensor [B, (n)] of int64 ids with int64 row splits,
what `components.preprocess.reader` reads from the preprocess output.
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

from components.preprocess.metadata import Metadata

# Metadata written before bags existed has no separator; "," is preprocess's default for TSV.
DEFAULT_SEPARATOR = ","


def bag_caps(metadata: Metadata) -> dict[str, int | None]:
    """Bag key -> its cap (None: none), from metadata.json's options["max_bag_length"]."""
    caps = metadata.options.get("max_bag_length") or {}
    bad = {k: v for k, v in caps.items() if v is not None and (not isinstance(v, int) or v < 1)}
    if bad:
        raise ValueError(f"metadata options['max_bag_length'] must map bag keys to caps >= 1 or null, got {bad}")
    return {key: caps.get(key) for key in metadata.multi_hot_keys}


def split_field(text: tf.Tensor, separator: str) -> tf.RaggedTensor:
    """[B] stripped bag fields -> [B, (n)] raw elements."""
    return tf.strings.split(text, sep=separator).with_row_splits_dtype(tf.int64)


def joined(elements: tf.RaggedTensor, separator: str) -> tf.Tensor:
    """[B, (n)] elements -> [B] texts (for checks and messages: invalid UTF-8 in an element stays invalid)."""
    return tf.strings.reduce_join(elements, axis=1, separator=separator)


def bag_ids(elements: tf.RaggedTensor, cap: int | None, strip: Callable, ids_of: Callable) -> tf.RaggedTensor:
    """[B, (n)] raw elements -> [B, (m)] int64 ids: stripped, empty ones dropped, at most `cap` kept."""
    elements = elements.with_row_splits_dtype(tf.int64)
    stripped = elements.with_flat_values(strip(elements.flat_values))
    kept = tf.ragged.boolean_mask(stripped, tf.not_equal(stripped, ""))
    if cap is not None:
        kept = kept[:, :cap]
    return kept.with_flat_values(tf.cast(ids_of(kept.flat_values), tf.int64))
