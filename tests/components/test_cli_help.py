"""Every command's --help: fast (no TensorFlow), every option with its default in one style."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys

import pytest

from components.cli import COMMANDS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Commands whose module builds its parser with `build_parser()`; k8s builds one per subcommand.
PARSERS = [name for name in COMMANDS if name != "k8s"]


def _parsers(name: str):
    module = importlib.import_module(COMMANDS[name][0])
    parser = module.build_parser()
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield f"{name} {sub_name}", sub


def _options(parser: argparse.ArgumentParser):
    return [a for a in parser._actions if a.option_strings and a.help is not argparse.SUPPRESS
            and not isinstance(a, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction))]


@pytest.mark.parametrize("name", PARSERS)
def test_every_option_shows_its_default_in_one_style(name):
    for label, parser in _parsers(name):
        formatter = parser._get_formatter()
        for action in _options(parser):
            text = formatter._get_help_string(action)
            assert action.required or "(default: " in text, f"{label} {action.option_strings[0]}: {text!r}"
        assert not re.search(r"\(default [^:]", parser.format_help()), f"{label}: a '(default X)' without colon"


def test_help_imports_no_tensorflow():
    code = (
        "import json, sys\n"
        "from components.cli import COMMANDS, main\n"
        "for name in COMMANDS:\n"
        "    for argv in ([name, '--help'], [name, 'compile', '--help'] if name == 'pipeline' else None):\n"
        "        if argv is None:\n"
        "            continue\n"
        "        try:\n"
        "            main(argv)\n"
        "        except SystemExit:\n"
        "            pass\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_train_help_lists_the_optimizer_names():
    import optimizers
    from components.trainer.cli import build_parser
    from components.trainer.fn_args import OPTIMIZER_NAMES

    assert OPTIMIZER_NAMES == tuple(optimizers.OPTIMIZERS)
    text = " ".join(build_parser().format_help().split())
    for name in OPTIMIZER_NAMES:
        assert name in text
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--train-steps", "1", "--optimizer", "nope"])


def test_pipeline_compile_has_a_description():
    from components.pipeline.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert "Kubeflow Pipelines" in (sub.choices["compile"].description or "")
