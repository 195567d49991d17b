"""Turning a TensorFlow op error from a training step into a message a user can act on."""

from __future__ import annotations

import re

_ASSERTION = re.compile(r"assertion failed: (.*)", re.DOTALL)


def assertion_text(message: str, limit: int = 600) -> str:
    """The `tf.debugging.Assert` data of an error message ("feature cat_3: ids must be ..."), without the graph
    traceback TensorFlow puts first; the message's end when it holds no assertion."""
    found = _ASSERTION.search(message)
    text = found.group(1) if found else message
    text = re.sub(r"\s*\[\[\{\{node .*", "", text, flags=re.DOTALL).strip()
    return text[:limit] if found else text[-limit:]


def training_error(message: str, metadata_path: str) -> str:
    text = assertion_text(message)
    if "ids must be in" in text or "Missing" in text or "Feature:" in text:
        return f"the training data does not match the metadata at {metadata_path}: {text}"
    return f"training stopped: {text}"
