"""k8s/ stays equal to what the builders render; docs/kubernetes.md's image override works with kubectl alone."""

import os
import re
import shutil
import subprocess

import pytest
import yaml

from components.launcher.kustomize import OVERLAYS, expected_overlay, write_kustomize
from tests.components.launcher.schemas import REPO_ROOT, validate

K8S = REPO_ROOT / "k8s"
REGENERATE = "regenerate with `embedopt k8s kustomize --output k8s`"


def _key(obj):
    return (obj["kind"], obj["metadata"]["name"])


def test_checked_in_files_equal_a_fresh_render(tmp_path):
    write_kustomize(str(tmp_path))
    fresh = {p.relative_to(tmp_path): p.read_text() for p in tmp_path.rglob("*.yaml")}
    checked_in = {p.relative_to(K8S): p.read_text() for p in K8S.rglob("*.yaml")}
    assert checked_in.keys() == fresh.keys(), REGENERATE
    for path, text in fresh.items():
        assert checked_in[path] == text, f"k8s/{path} is stale; {REGENERATE}"


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_kubectl_kustomize_equals_builders(overlay):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        # CI and the dev machines have kubectl: in CI its absence fails the run instead of hiding this test.
        (pytest.fail if os.environ.get("CI") else pytest.skip)("kubectl is not installed")
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    rendered = sorted((d for d in yaml.safe_load_all(out) if d), key=_key)
    expected = sorted(expected_overlay(overlay), key=_key)
    assert [_key(d) for d in rendered] == [_key(d) for d in expected]
    assert rendered == expected, REGENERATE
    for obj in rendered:
        validate(obj)


def _readme_image_overlay() -> tuple[str, str]:
    """docs/kubernetes.md's own-overlay kustomization and the command that applies it."""
    section = (REPO_ROOT / "docs" / "kubernetes.md").read_text()
    match = re.search(r"cat > (\S+)/kustomization.yaml <<'YAML'\n(.*?)\nYAML\n(.*?)\n", section, re.S)
    assert match, "docs/kubernetes.md: the kustomize step with your own overlay is gone"
    directory, kustomization, next_line = match.groups()
    assert next_line.split("#")[0].split() == ["kubectl", "apply", "-k", directory], "apply the overlay just written"
    return kustomization, directory


def _images(obj):
    if isinstance(obj, dict):
        return [c["image"] for c in obj.get("containers", [])] + [i for v in obj.values() for i in _images(v)]
    if isinstance(obj, list):
        return [i for v in obj for i in _images(v)]
    return []


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_readme_image_override_works_with_kubectl_alone(overlay, tmp_path):
    """The docs' overlay sets the image of every container, CRDs included, with `kubectl kustomize` only."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        (pytest.fail if os.environ.get("CI") else pytest.skip)("kubectl is not installed")
    kustomization, _ = _readme_image_overlay()
    config = yaml.safe_load(kustomization)
    assert config["resources"] == ["../k8s/overlays/trainjob"]
    mine = tmp_path / "repo" / "my-embedopt"
    mine.mkdir(parents=True)
    (tmp_path / "repo" / "k8s").symlink_to(K8S)
    (mine / "kustomization.yaml").write_text(kustomization.replace("overlays/trainjob", f"overlays/{overlay}"))
    out = subprocess.run([kubectl, "kustomize", str(mine)], check=True, capture_output=True, text=True, timeout=60).stdout
    images = _images(list(yaml.safe_load_all(out)))
    assert images and set(images) == {"REGISTRY/embedopt:0.1.0"}, images
