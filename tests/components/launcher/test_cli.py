"""`embedopt k8s render` and `kustomize` through the CLI entry point; help that shows defaults; trainer flags."""

import argparse
import pathlib
import subprocess
import sys

import pytest
import yaml

from components.launcher import cli
from components.launcher.config import MULTI_WORKER_KINDS
from components.launcher.tf_config import command_and_env
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


def _subparsers():
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {name: p for name, p in sub.choices.items() if name != "entrypoint"}


@pytest.mark.parametrize("command", ["render", "submit", "status", "logs", "delete", "kustomize"])
def test_every_option_has_help_that_shows_its_default(command):
    parser = _subparsers()[command]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{command} {action.option_strings[0]} has no help text"
        assert "default" in formatter._get_help_string(action), f"{command} {action.option_strings[0]} hides its default"
    text = " ".join(parser.format_help().split())
    if command in ("render", "submit"):
        for shown in ("--cpu-request CPU_REQUEST CPU request per worker (default: 4)",
                      "--namespace NAMESPACE, -n NAMESPACE namespace of the job and its objects (default: embedopt)",
                      "--image IMAGE trainer image, e.g. REGISTRY/embedopt:0.1.0 (default: embedopt:0.1.0)",
                      "--cluster-runtime trainjob: a ClusterTrainingRuntime instead of a namespaced TrainingRuntime "
                      "(default: off)"):
            assert shown in text


def test_entrypoint_options_show_their_defaults():
    from components.launcher.tf_config import build_parser

    for action in build_parser()._actions:
        if action.option_strings and not isinstance(action, argparse._HelpAction):
            assert action.help and "default" in action.help, action.option_strings


@pytest.mark.parametrize("command", ["render", "submit"])
@pytest.mark.parametrize("columns", ["80", "250"])
def test_usage_shows_the_trainer_flags_passthrough(command, columns, monkeypatch):
    monkeypatch.setenv("COLUMNS", columns)
    parser = _subparsers()[command]
    usage = parser.format_usage()
    assert usage.rstrip().endswith("[-- TRAINER_FLAGS ...]"), usage
    assert len(usage.rstrip().splitlines()[-1]) <= int(columns), "the passthrough wraps like the rest of the usage"
    help_text = " ".join(parser.format_help().split())
    assert "TRAINER_FLAGS: everything after `--` replaces the default `embedopt train` flags" in help_text
    assert "--data /data/prepared --output /data/models --train-steps 10000 --no-progress" in help_text
    assert "[-- TRAINER_FLAGS" not in _subparsers()["status"].format_usage()


def test_render_trainjob_with_cluster_runtime(capsys):
    assert cli.main(["render", "--kind", "trainjob", "--workers", "3", "--cluster-runtime", "--active-deadline", "600",
                     "--shm-size", "2Gi", "--", "--train-steps", "5"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["kind"] for d in docs] == ["Namespace", "PersistentVolumeClaim", "ConfigMap", "ClusterTrainingRuntime", "TrainJob"]
    for d in docs:
        validate(d)
    trainjob = docs[4]["spec"]
    assert trainjob["trainer"]["numNodes"] == 3 and trainjob["activeDeadlineSeconds"] == 600
    assert trainjob["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                                      "name": "embedopt-train-tensorflow"}
    (node,) = docs[3]["spec"]["template"]["spec"]["replicatedJobs"]
    volumes = {v["name"]: v for v in node["template"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["dshm"]["emptyDir"]["sizeLimit"] == "2Gi"


def test_cluster_runtime_with_another_kind_is_refused(capsys):
    assert cli.main(["render", "--kind", "indexed", "--cluster-runtime"]) == 2
    assert "cluster_runtime=True applies to kind 'trainjob' only" in capsys.readouterr().err


def _containers(doc):
    """Every container of a workload object, wherever its kind keeps the pod template."""
    if doc["kind"] == "Job":
        return doc["spec"]["template"]["spec"]["containers"]
    if doc["kind"] == "TFJob":
        return [c for r in doc["spec"]["tfReplicaSpecs"].values() for c in r["template"]["spec"]["containers"]]
    if doc["kind"].endswith("TrainingRuntime"):
        return [c for rj in doc["spec"]["template"]["spec"]["replicatedJobs"]
                for c in rj["template"]["spec"]["template"]["spec"]["containers"]]
    return []


@pytest.mark.parametrize("kind", MULTI_WORKER_KINDS)
def test_table_sharding_row_reaches_the_trainer_in_every_multi_worker_kind(kind, tmp_path, capsys):
    """`-- ... --table-sharding row` ends up in the `embedopt train` command line every worker runs."""
    flags = ["--data", "/data/prepared", "--output", "/data/models", "--train-steps", "100", "--table-sharding", "row"]
    assert cli.main(["render", "--kind", kind, "--workers", "4", "--", *flags]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    args_file = tmp_path / "trainer-args"  # the ConfigMap as the pod mounts it
    args_file.write_text(config_map["data"]["trainer-args"])
    containers = [c for d in docs for c in _containers(d)]
    assert containers
    from components.trainer.cli import build_parser as trainer_parser

    for container in containers:
        args = container["args"]
        assert args[:2] == ["k8s", "entrypoint"]
        args = [str(args_file) if a == "/etc/embedopt/trainer-args" else a for a in args[2:]]
        command, _ = command_and_env(args, {})
        assert command[3] == "train" and command[-2:] == ["--table-sharding", "row"]
        try:
            parsed = trainer_parser().parse_args(command[4:])
        except SystemExit:
            pytest.fail(f"`embedopt train` rejects {command[4:]}: it has no --table-sharding flag yet "
                        f"(see the error above)")
        assert parsed.table_sharding == "row"
