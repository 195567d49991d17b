"""The `embedopt` command line: one subcommand per component.

Each subcommand lives in its own module, imported only when that subcommand
runs, so `embedopt --help` stays fast and a missing optional extra (kfp,
kubernetes) only matters to the subcommand that needs it. A subcommand module
exposes `main(argv: list[str]) -> int` and builds its own `argparse` parser
with `prog="embedopt <name>"`, so Beam pipeline options can pass through.

Whatever a subcommand raises ends here as one line, `embedopt <name>: <what>
(<path>)`, and exit code 1 (components/failure.py); `--verbose` adds the
traceback. Usage errors the subcommands catch themselves keep their exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import textwrap

# name -> (module, one-line help). Order is the order shown by --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("components.demo", "run the main job on an embedded default and print a report"),
    "compare": ("components.compare", "train a small SparseEmbedding model with every optimizer; print a table"),
    "synth": ("components.preprocess.synth", "write synthetic Criteo-format logs with a planted ground truth"),
    "preprocess": ("components.preprocess.pipeline", "Beam pipeline: logs -> GZIP TFRecords of tf.Examples (TFX layout)"),
    "train": ("components.trainer.cli", "train the DLRM-style model (run_fn) under tf.distribute"),
    "predict": ("components.predict", "batch-score raw Criteo TSV logs with a trained SavedModel"),
    "k8s": ("components.launcher.cli", "render, submit and watch Kubernetes training jobs"),
    "pipeline": ("components.pipeline.cli", "compile the Kubeflow (KFP v2) pipeline"),
    "bench": ("benchmarks.__main__", "run the benchmarks, write results.json and plots"),
    "doctor": ("components.doctor", "versions, devices, and which path (fused kernel or TF ops) each optimizer takes"),
}


class HelpFormatter(argparse.HelpFormatter):
    """Help in one style for every command: each option ends with `(default: X)`, unless its help already says.

    Lines never break inside a flag (`--no-progress`), so examples can be copied.
    """

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False, break_long_words=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return textwrap.fill(" ".join(text.split()), width, initial_indent=indent, subsequent_indent=indent,
                             break_on_hyphens=False, break_long_words=False)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("(default" in text or action.default is argparse.SUPPRESS or not action.option_strings
                or action.required):
            return text
        default = action.default
        shown = ("off" if default is False else "on" if default is True
                 else "none" if default in (None, []) else "%(default)s")
        return f"{text} (default: {shown})"


def positive_int(text: str) -> int:
    """argparse `type` for counts: an integer >= 1, else a usage error naming the value."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        "usage: embedopt <command> [options]",
        "",
        "Train recommendation models with huge embedding tables on TensorFlow,",
        "with optimizers whose sparse path touches only the rows a batch uses.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `embedopt <command> --help` for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from importlib.metadata import version

        print(f"embedopt {version('embedopt')}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"embedopt: unknown command {name!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module_name, _ = COMMANDS[name]
    # TensorFlow's C++ start-up chatter (no CUDA driver, CPU features) is
    # noise on a command line; users can lower the level again.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] in ("components", "benchmarks", "optimizers"):
            print(f"embedopt: command {name!r} is not available in this version", file=sys.stderr)
            return 2
        print(
            f"embedopt {name}: needs the Python package {err.name!r}; "
            f"install the matching extra from the repository root, e.g. `pip install '.[k8s,kfp,bench]'`",
            file=sys.stderr,
        )
        return 2
    from components.failure import one_line_failures
    from components.quiet import verbose_requested

    exit_codes = [0]
    with one_line_failures(name, verbose_requested(rest), exit_codes):
        exit_codes[0] = int(module.main(rest) or 0)
    return exit_codes[0]


if __name__ == "__main__":
    sys.exit(main())
