"""The compiled KFP v2 pipeline: loads as YAML, names every step, runs embedopt in the project image."""

import pathlib
import subprocess
import sys

import pytest
import yaml

from components.pipeline import cli

REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]
IMAGE = "registry.example/embedopt:0.1.0"


def _compile(tmp_path, *extra):
    out = tmp_path / "pipeline.yaml"
    assert cli.main(["compile", "--output", str(out), "--image", IMAGE, *extra]) == 0
    return yaml.safe_load(out.read_text())


def _executors(spec):
    return spec["deploymentSpec"]["executors"]


@pytest.mark.parametrize(
    "source, steps",
    [("synth", ["preprocess", "synth", "train"]), ("external", ["import-logs", "preprocess", "train"])],
)
def test_compiled_pipeline_names_every_step(tmp_path, source, steps):
    spec = _compile(tmp_path, "--source", source)
    tasks = spec["root"]["dag"]["tasks"]
    assert sorted(t["taskInfo"]["name"] for t in tasks.values()) == steps
    assert spec["pipelineInfo"]["name"] == "embedopt-train"
    assert "preprocess" in tasks["train"]["dependentTasks"]


def test_steps_run_embedopt_subcommands_in_the_image(tmp_path):
    spec = _compile(tmp_path)
    containers = {name: e["container"] for name, e in _executors(spec).items()}
    assert {c["image"] for c in containers.values()} == {IMAGE}
    assert {c["command"][0] for c in containers.values()} == {"embedopt"}
    assert [containers[f"exec-{s}"]["args"][0] for s in ("synth", "preprocess", "train")] == ["synth", "preprocess", "train"]
    train_args = containers["exec-train"]["args"]
    assert "--data" in train_args and "--train-steps" in train_args
    assert containers["exec-train"]["resources"]["accelerator"]["count"] == "1"
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {"rows", "train_steps", "optimizer"} <= params.keys()


def test_cpu_only_train_step_has_no_accelerator(tmp_path):
    spec = _compile(tmp_path, "--gpus", "0")
    assert "accelerator" not in _executors(spec)["exec-train"]["container"].get("resources", {})


def test_missing_kfp_gives_the_install_hint(tmp_path):
    code = ("import sys; sys.modules['kfp'] = None; from components.pipeline import cli; "
            f"sys.exit(cli.main(['compile', '--output', {str(tmp_path / 'p.yaml')!r}]))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "pip install '.[kfp]'" in result.stderr
