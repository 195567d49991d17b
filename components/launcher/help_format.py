"""Help for `embedopt k8s`: every option shows its default; render and submit show the trainer-flag passthrough.

Imports only the standard library at module level: `embedopt k8s entrypoint`
runs in the image, which has no kubernetes client.
"""

from __future__ import annotations

import argparse
import textwrap

TRAINER_FLAGS_USAGE = "[-- TRAINER_FLAGS ...]"


def trainer_flags_epilog() -> str:
    from components.launcher.config import DEFAULT_TRAINER_ARGS

    return (
        f"TRAINER_FLAGS: everything after `--` replaces the default `embedopt train` flags "
        f"({' '.join(DEFAULT_TRAINER_ARGS)}); they go into the <name>-trainer-args ConfigMap, e.g. "
        "`-- --data /data/prepared --output /data/models --train-steps 20000 --table-sharding row`."
    )


class HelpFormatter(argparse.HelpFormatter):
    """Appends each option's default to its help, unless the help already states it.

    Lines never break inside a flag (`--no-progress`), so examples can be copied.
    """

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False, break_long_words=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return textwrap.fill(" ".join(text.split()), width, initial_indent=indent, subsequent_indent=indent,
                             break_on_hyphens=False, break_long_words=False)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        default = action.default
        shown = "off" if default is False else "on" if default is True else "none" if default in (None, []) else "%(default)s"
        return f"{text} (default: {shown})"


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
