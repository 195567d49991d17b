"""The Dockerfile, parsed: pinned GPU base, fixed non-root user, `embedopt` entrypoint; a tight build context."""

import fnmatch
import json
import pathlib
import re

import pytest

from components.launcher.config import RUN_AS_UID

REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]
BASE_IMAGE = "tensorflow/tensorflow:2.21.0-gpu"


def _instructions() -> list[tuple[str, str]]:
    text = (REPO_ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)  # join continuation lines
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_every_stage_uses_the_pinned_gpu_base():
    froms = [rest.split()[0] for word, rest in _instructions() if word == "FROM"]
    assert froms and all(f == BASE_IMAGE for f in froms), froms


def test_final_user_is_the_fixed_non_root_uid():
    users = [rest for word, rest in _instructions() if word == "USER"]
    assert users, "no USER: the image would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) == RUN_AS_UID != 0, "runAsNonRoot needs a numeric UID, equal to the manifests'"


def test_entrypoint_is_embedopt_in_exec_form():
    entrypoints = [rest for word, rest in _instructions() if word == "ENTRYPOINT"]
    assert json.loads(entrypoints[-1]) == ["embedopt"]
    assert any(word == "WORKDIR" for word, _ in _instructions())


def test_installs_without_extras_or_cache_and_no_secrets():
    instructions = _instructions()
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    installs = re.findall(r"pip (?:install|wheel)[^&]*", runs)
    assert installs and all("--no-cache-dir" in i for i in installs)
    assert not re.search(r"\[(dev|test)", runs), "no dev/test extras in the image"
    assert not any(word == "ADD" for word, _ in instructions), "COPY only: ADD fetches URLs and unpacks archives"
    for word, rest in instructions:
        assert not re.search(r"(?i)(token|password|secret|kubeconfig|\.env\b|id_rsa)", rest), (word, rest)


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; '!' re-includes; a match on a parent dir counts."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.rstrip("/")
        if any(fnmatch.fnmatch(c, pat) or (pat.startswith("**/") and fnmatch.fnmatch(c.split("/")[-1], pat[3:]))
               for c in candidates):
            ignored = not negate
    return ignored


@pytest.mark.parametrize(
    "path, ignored",
    [
        (".git/HEAD", True), (".venv/bin/python", True), ("tests/fixtures/criteo_sample.tsv", True),
        ("runs/x/metrics.json", True), ("k8s/base/kustomization.yaml", True), (".env", True),
        ("components/kubeconfig", True), ("components/__pycache__/cli.cpython-311.pyc", True),
        ("pyproject.toml", False), ("README.md", False), ("components/cli.py", False),
        ("optimizers/__init__.py", False), ("components/launcher/tf_config.py", False),
    ],
)
def test_dockerignore(path, ignored):
    patterns = [l.strip() for l in (REPO_ROOT / ".dockerignore").read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert _ignored(path, patterns) is ignored


def test_copied_sources_exist():
    for word, rest in _instructions():
        if word == "COPY" and "--from" not in rest:
            for src in rest.split()[:-1]:
                assert (REPO_ROOT / src).exists(), f"COPY {src}: missing from the build context"
