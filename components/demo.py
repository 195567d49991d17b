"""`embedopt demo`: the main job on an embedded default.

For now this is the optimizer comparison (`embedopt compare`); the trainer
component turns it into the full synth -> preprocess -> train -> export run.
"""

from __future__ import annotations

from components import compare


def main(argv: list[str]) -> int:
    return compare.main(argv)
