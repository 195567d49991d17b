"""Help for `embedopt k8s`: every option shows its default; render and submit show the trainer-flag passthrough.

Imports only the standard library at module level: `embedopt k8s entrypoint`
runs in the image, which has no kubernetes client.
"""

from __future__ import annotations

from components.cli import HelpFormatter

TRAINER_FLAGS_USAGE = "[-- TRAINER_FLAGS ...]"
__all__ = ["HelpFormatter", "PassthroughHelpFormatter", "TRAINER_FLAGS_USAGE", "trainer_flags_epilog"]


def trainer_flags_epilog() -> str:
    from components.launcher.config import DEFAULT_TRAINER_ARGS

    return (
        f"TRAINER_FLAGS: everything after `--` replaces the default `embedopt train` flags "
        f"({' '.join(DEFAULT_TRAINER_ARGS)}); they go into the <name>-trainer-args ConfigMap, e.g. "
        "`-- --data /data/prepared --output /data/models --train-steps 20000 --table-sharding row`."
    )


class PassthroughHelpFormatter(HelpFormatter):
    """Usage that ends in `[-- TRAINER_FLAGS ...]`: what comes after `--` goes to the trainer."""

    def _format_usage(self, usage, actions, groups, prefix):
        lines = super()._format_usage(usage, actions, groups, prefix).rstrip("\n").split("\n")
        if len(lines[-1]) + 1 + len(TRAINER_FLAGS_USAGE) <= self._width:
            lines[-1] += f" {TRAINER_FLAGS_USAGE}"
        else:
            indent = len(lines[1]) - len(lines[1].lstrip()) if len(lines) > 1 else len(f"usage: {self._prog} ")
            lines.append(" " * indent + TRAINER_FLAGS_USAGE)
        return "\n".join(lines) + "\n\n"
