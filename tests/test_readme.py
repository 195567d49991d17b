"""The README's and docs/'s commands are the ones the project runs, and run as written in a fresh shell.

- The two set-up commands come first, then the venv's activation; CI runs
  the test command verbatim.
- Every bash command that needs the venv (`embedopt`, `pip`, `python`,
  `pytest`) either names it as `.venv/bin/...` or comes after a
  `source .venv/bin/activate` line.
- Every `embedopt <command>` in the README (bash blocks and inline code) is a
  command of `embedopt --help`, and every flag it uses is one of that
  command's real argparse parser (Beam's own options for `preprocess`;
  trainer flags after `k8s ... --`); a bash command without placeholders is
  parsed by that parser, so bad values and missing required flags fail too.
- `pip install` installs extras from the repository (`'.[k8s]'`), never
  `'embedopt[k8s]'`: embedopt is not on a package index.
- The README is a front page of at most 250 lines; the reference lives in
  docs/*.md. Each docs page is checked like the README (a page read on its
  own activates the venv before its first venv command), and every relative
  link of the README and the docs reaches a file, and a heading of it when
  the link names one.

Each checker returns a list of problems; the tests at the bottom show that
they find the mistakes they are for.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import io
import pathlib
import re
import shlex

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
README_MAX_LINES = 250
ACTIVATE = "source .venv/bin/activate"
# Programs that exist only inside the venv (python3 -m venv is the system's, before there is one).
VENV_PROGRAMS = {"embedopt", "pip", "pip3", "python", "pytest"}
PLACEHOLDER = re.compile(r"^(\.\.\.|\[.*|<.*)$")


def readme_text() -> str:
    return README.read_text()


def readme_commands():
    text = readme_text()
    return re.findall(r"```bash\n(.+?)\n```", text[: text.index("---")])


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def command_lines(block: str) -> list[str]:
    """The block's lines with continuations joined; heredoc bodies dropped."""
    lines, pending, heredoc_end = [], "", None
    for line in block.splitlines():
        if heredoc_end is not None:
            if line.strip() == heredoc_end:
                heredoc_end = None
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        line, pending = pending + line, ""
        match = re.search(r"<<-?\s*'?\"?(\w+)", line)
        if match:
            heredoc_end = match.group(1)
        lines.append(line)
    return lines


def simple_commands(line: str) -> list[list[str]]:
    """`a && b; c | d  # comment` -> [[a...], [b...], [c...], [d...]]."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token in ("&&", "||", ";", "|", "&"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    return [c for c in commands if c]


def program(tokens: list[str]) -> str:
    return tokens[0].rsplit("/", 1)[-1] if tokens else ""


def check_activation(text: str) -> list[str]:
    """Every venv program in a bash block is `.venv/bin/...` or comes after `source .venv/bin/activate`."""
    problems, active = [], False
    for block in bash_blocks(text):
        for line in command_lines(block):
            for tokens in simple_commands(line):
                if tokens[:2] == ["source", ".venv/bin/activate"] or tokens[:2] == [".", ".venv/bin/activate"]:
                    active = True
                elif program(tokens) in VENV_PROGRAMS and not tokens[0].startswith(".venv/bin/") and not active:
                    problems.append(f"{line.strip()!r}: `{tokens[0]}` runs before `{ACTIVATE}` "
                                    "(not on PATH in a fresh shell)")
    return problems


def check_pip_installs(text: str) -> list[str]:
    return [f"`pip install {m.group(0)}`: embedopt is not on a package index; install '.[extra]' from the "
            "repository root" for m in re.finditer(r"['\"]?embedopt\[[\w,]+\]['\"]?", text)]


def embedopt_commands(text: str) -> list[tuple[list[str], bool]]:
    """(argv after `embedopt`, from a bash block) for every embedopt command in bash blocks and inline code."""
    found = []
    for block in bash_blocks(text):
        for line in command_lines(block):
            found += [(tokens[1:], True) for tokens in simple_commands(line) if program(tokens) == "embedopt"]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in re.findall(r"`([^`]+)`", prose):
        tokens = shlex.split(" ".join(span.split()))
        # Not `embedopt <command> --help` (a pattern) nor `embedopt preprocess: <problem>` (a message).
        if tokens[0] == "embedopt" and len(tokens) > 1 and not tokens[1].startswith("<") \
                and not tokens[1].endswith(":"):
            found.append((tokens[1:], False))
    return found


@functools.lru_cache(maxsize=None)
def cli_commands() -> tuple[str, ...]:
    """The commands `embedopt --help` lists."""
    from components import cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["--help"]) == 0
    listing = out.getvalue().split("commands:\n", 1)[1]
    return tuple(line.split()[0] for line in listing.splitlines() if line.startswith("  ") and line.strip())


@functools.lru_cache(maxsize=None)
def parser_of(command: str) -> argparse.ArgumentParser:
    from components import cli

    return importlib.import_module(cli.COMMANDS[command][0]).build_parser()


@functools.lru_cache(maxsize=None)
def beam_options() -> frozenset:
    from apache_beam.options.pipeline_options import PipelineOptions

    return frozenset(PipelineOptions([]).get_all_options())


def _subparser(parser: argparse.ArgumentParser, args: list[str]):
    """Descends into subcommands (`k8s submit`, `pipeline compile`): (parser, its args, the path)."""
    path = []
    while True:
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions or not args or args[0] not in actions[0].choices:
            return parser, args, path
        path.append(args[0])
        parser, args = actions[0].choices[args[0]], args[1:]


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def _parse_error(parser: argparse.ArgumentParser, args: list[str], known: bool) -> str | None:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_known_args(args) if known else parser.parse_args(args)
    except SystemExit as exit_:
        if exit_.code:
            return err.getvalue().strip().splitlines()[-1]
    return None


def check_embedopt_command(argv: list[str], full_parse: bool) -> list[str]:
    """Problems with `embedopt ARGV`: unknown command or flag; with `full_parse`, anything the parser refuses."""
    shown = "embedopt " + " ".join(argv)
    if not argv or argv[0].startswith("-"):
        return [] if not argv or argv[0] in ("--help", "-h", "--version") else [f"{shown}: unknown option {argv[0]}"]
    command, args = argv[0], argv[1:]
    if command not in cli_commands():
        return [f"{shown}: {command!r} is not a command of `embedopt --help` ({', '.join(cli_commands())})"]
    trainer_args = []
    if command == "k8s" and "--" in args:  # flags after `--` go to `embedopt train` in the pod
        args, trainer_args = args[: args.index("--")], args[args.index("--") + 1:]
    top = parser_of(command)
    parser, own, path = _subparser(top, args)
    problems = []
    checks = ((own, " ".join([command, *path]), _flags(parser),
               beam_options() if command == "preprocess" else frozenset()),
              (trainer_args, "train", _flags(parser_of("train")), frozenset()))
    for tokens, owner, allowed, extra in checks:
        for token in tokens:
            name = token.split("=", 1)[0]
            if name.startswith("--") and name != "--" and name not in allowed \
                    and name[2:].replace("-", "_") not in extra:
                problems.append(f"{shown}: {name} is not an option of `embedopt {owner}`")
    if full_parse and not problems and not any(PLACEHOLDER.match(t) for t in argv) \
            and not {"-h", "--help"} & set(argv):
        error = _parse_error(top, args, known=command == "preprocess")
        if error:
            problems.append(f"{shown}: {error}")
    return problems


def check_embedopt_commands(text: str) -> list[str]:
    return [p for argv, in_block in embedopt_commands(text) for p in check_embedopt_command(argv, in_block)]


def check_flag_tables(text: str) -> list[str]:
    """In a section headed by `embedopt <command>`, every --flag of a table row's first cell is that command's."""
    problems = []
    text = re.sub(r"```.*?```", "", text, flags=re.S) + "\n#"  # comment lines in code blocks are no headings
    for heading, body in re.findall(r"^#+ [^\n]*`embedopt (\w+)`[^\n]*\n(.*?)(?=^#)", text, flags=re.S | re.M):
        parser = parser_of(heading)
        extra = beam_options() if heading == "preprocess" else frozenset()
        for cell in re.findall(r"^\| ([^|]*(?:\\\|[^|]*)*) \|", body, flags=re.M):
            for flag in re.findall(r"--[\w-]+", cell):
                if flag not in _flags(parser) and flag[2:].replace("-", "_") not in extra:
                    problems.append(f"`embedopt {heading}` table: {flag} is not an option")
    return problems


def heading_anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def check_links(path: pathlib.Path) -> list[str]:
    """Relative links of a Markdown file that reach no file, or no heading of it."""
    problems = []
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            problems.append(f"{path.name}: link {target!r} reaches no file")
        elif anchor and linked.suffix == ".md":
            anchors = {heading_anchor(h) for h in re.findall(r"^#+ (.*)$", linked.read_text(), flags=re.M)}
            if anchor not in anchors:
                problems.append(f"{path.name}: link {target!r}: no heading #{anchor} in {linked.name}")
    return problems


# ---------------------------------------------------------------- the README and docs/


def test_readme_starts_with_two_setup_commands_then_the_activation():
    commands = readme_commands()
    assert len(commands) == 3
    assert commands[0].endswith("embedopt demo")
    assert "pytest" in commands[1]
    assert commands[2] == ACTIVATE


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1] in ci


def test_readme_activates_the_venv_before_the_first_bare_embedopt():
    text = readme_text()
    assert ACTIVATE in text
    assert check_activation(text) == []


def test_readme_installs_extras_from_the_repository():
    assert check_pip_installs(readme_text()) == []


def test_readme_embedopt_commands_exist_and_use_real_flags():
    found = embedopt_commands(readme_text())
    assert len(found) > 10 and any(in_block for _, in_block in found)
    assert check_embedopt_commands(readme_text()) == []


def test_readme_flag_tables_name_real_flags():
    assert check_flag_tables(readme_text()) == []


def test_readme_is_a_front_page_that_links_every_docs_page():
    text = readme_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    assert len(DOCS) >= 6
    for page in DOCS:
        assert f"](docs/{page.name})" in text, f"the README does not link {page.name}"


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_docs_commands_run_as_written(page):
    text = page.read_text()
    assert check_activation(text) == []
    assert check_pip_installs(text) == []
    assert check_embedopt_commands(text) == []
    assert check_flag_tables(text) == []


def test_docs_show_many_commands():
    found = [c for page in DOCS for c in embedopt_commands(page.read_text())]
    assert len(found) > 30


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.name)
def test_relative_links_reach_files_and_headings(path):
    assert check_links(path) == []


def test_cli_install_hints_install_from_the_repository():
    for path in (ROOT / "components").rglob("*.py"):
        assert check_pip_installs(path.read_text()) == [], path


# ---------------------------------------------------------------- the checkers find what they are for


def test_activation_check_finds_a_bare_embedopt_before_activation():
    text = "```bash\n.venv/bin/embedopt demo\nembedopt train --train-steps 1\n```\n"
    assert len(check_activation(text)) == 1
    assert check_activation(f"```bash\n{ACTIVATE}\n```\n" + text) == []
    chained = "```bash\npython3 -m venv .venv && pip install '.[k8s]'\n```\n"
    assert "`pip` runs before" in check_activation(chained)[0]


def test_pip_check_finds_an_install_by_package_name():
    assert check_pip_installs("```bash\npip install 'embedopt[kfp]'\n```") != []
    assert check_pip_installs("`pip install 'embedopt[k8s,kfp,bench]'`") != []
    assert check_pip_installs("pip install '.[kfp]'") == []


@pytest.mark.parametrize("command, expected", [
    ("embedopt trian --data x", "not a command"),
    ("embedopt train --data /tmp/pre1m --train-step 10", "--train-step is not an option of `embedopt train`"),
    ("embedopt predict --model /tmp/run1/serving_model --input 'day_0*'", "required"),
    ("embedopt synth --rows many --output x.tsv", "invalid int value"),
    ("embedopt preprocess --input x --output y --runnr DirectRunner", "--runnr is not an option"),
    ("embedopt k8s submit --kind indexed --workers 2 -- --trian-steps 5",
     "--trian-steps is not an option of `embedopt train`"),
    ("embedopt k8s submit --kind cronjob", "invalid choice"),
    ("embedopt pipeline compile --image x --gpu 1", "--gpu is not an option of `embedopt pipeline compile`"),
])
def test_command_check_finds_bad_commands_flags_and_values(command, expected):
    text = f"```bash\n{ACTIVATE}\n{command}\n```\n"
    problems = check_embedopt_commands(text)
    assert len(problems) == 1 and expected in problems[0], problems


def test_command_check_reads_inline_code_and_continuations():
    assert check_embedopt_commands("Run `embedopt compare --optimizer sgd`.") != []
    assert check_embedopt_commands("Run `embedopt compare --optimizers sgd`.") == []
    block = ("```bash\nembedopt preprocess --input a --output b \\\n"
             "    --runner DirectRunner --direct_num_workers 2\n```")
    assert check_embedopt_commands(block) == []
    assert check_embedopt_commands(block.replace("--direct_num_workers", "--direct-workers")) != []


def test_link_check_finds_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n\n## Some `flag` here\n")
    page = tmp_path / "b.md"
    page.write_text("[ok](a.md#some-flag-here) [x](c.md) [y](a.md#nope) [web](https://example.com)")
    problems = check_links(page)
    assert len(problems) == 2 and "c.md" in problems[0] and "#nope" in problems[1]


def test_flag_table_check_finds_an_unknown_flag():
    text = ("### `embedopt synth`: logs\n\n| flag | meaning |\n|---|---|\n| `--rows N` | rows |\n"
            "| `--seeds S` | x |\n\n## Next\n")
    assert check_flag_tables(text) == ["`embedopt synth` table: --seeds is not an option"]
