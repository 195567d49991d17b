"""Turning a TensorFlow op error from a training step into a message a user can act on."""

from __future__ import annotations

import re

_ASSERTION = re.compile(r"assertion failed: (.*)", re.DOTALL)


def assertion_text(message: str, limit: int = 600) -> str:
    """The `tf.debugging.Assert` data of an error message ("feature cat_3: ids must be ..."), without the graph
    traceback TensorFlow puts first; the message's end when it holds no assertion."""
    text = re.split(r"\s*\[\[\{\{node ", message, maxsplit=1)[0].strip()
    found = _ASSERTION.search(text)
    if found:
        return found.group(1).strip()[:limit]
    # "Graph execution error: Detected at node ... (most recent call last): <traceback> <the error>": its last line.
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else text)[:limit]


def training_error(message: str, metadata_path: str) -> str:
    text = assertion_text(message)
    if "ids must be in" in text or "Missing" in text or "Feature:" in text:
        return f"the training data does not match the metadata at {metadata_path}: {text}"
    return f"training stopped: {text}"
