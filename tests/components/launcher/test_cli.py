"""`embedopt k8s render` and `kustomize` through the CLI entry point."""

import pathlib
import subprocess
import sys

import yaml

from components.launcher import cli
from tests.components.launcher.schemas import validate

REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]


def test_render_prints_valid_yaml_with_trainer_args(capsys):
    assert cli.main(["render", "--kind", "indexed", "--workers", "3", "--gpus", "2", "--image", "reg.example/embedopt:1",
                     "--", "--train-steps", "7"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["kind"] for d in docs] == ["Namespace", "PersistentVolumeClaim", "ConfigMap", "Service", "Job"]
    for d in docs:
        validate(d)
    assert docs[2]["data"]["trainer-args"] == "--train-steps\n7\n"
    container = docs[4]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "reg.example/embedopt:1"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert docs[4]["spec"]["completions"] == 3


def test_render_output_dir_writes_one_file_per_object(tmp_path, capsys):
    assert cli.main(["render", "--kind", "tfjob", "--data-host-path", "/mnt/data", "--output", str(tmp_path)]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["configmap-embedopt-train-trainer-args.yaml", "namespace-embedopt.yaml", "tfjob-embedopt-train.yaml"]
    for path in tmp_path.iterdir():
        validate(yaml.safe_load(path.read_text()))


def test_bad_flags_exit_2_naming_the_field(capsys):
    assert cli.main(["render", "--cpu-request", "16", "--cpu-limit", "8"]) == 2
    assert "cpu_request='16'" in capsys.readouterr().err
    assert cli.main(["render", "--node-selector", "novalue"]) == 2


def test_entrypoint_runs_through_the_embedopt_command():
    """The container's `embedopt k8s entrypoint -- ...` path, as a real process, without the kubernetes client."""
    code = "import os; print(os.environ.get('TF_CONFIG', 'unset'))"
    out = subprocess.run(
        [sys.executable, "-m", "components.cli", "k8s", "entrypoint", "--exec", "--", sys.executable, "-c", code],
        env={"PATH": "/usr/bin:/bin", "JOB_COMPLETION_INDEX": "1", "EMBEDOPT_JOB_NAME": "t", "EMBEDOPT_WORKERS": "2",
             "EMBEDOPT_PORT": "2222"},
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True,
    ).stdout.splitlines()
    assert out[0] == '{"cluster":{"worker":["t-0.t:2222","t-1.t:2222"]},"task":{"type":"worker","index":1}}'


def test_entrypoint_path_does_not_import_the_kubernetes_client():
    code = "import sys, components.launcher.cli; assert 'kubernetes' not in sys.modules, 'image has no k8s extra'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=60)
