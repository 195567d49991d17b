"""Launcher errors of issue 11: an unreachable API server, a kubeconfig that is not YAML, dropped trainer args.

Before the fixes submit and delete let urllib3's MaxRetryError through (a
70-line traceback) while status explained it, a broken kubeconfig ended in a
yaml.scanner traceback, and an empty, blank or '#'-leading trainer argument
vanished silently inside the pod (the args ConfigMap skips such lines).
"""

import socket

import pytest

from components.launcher import cli
from components.launcher.backend import KubernetesBackend, load_api_client
from components.launcher.builders import build_objects
from components.launcher.config import LaunchConfig
from components.launcher.errors import LauncherError
from tests.components.launcher.fake_apiserver import write_kubeconfig


@pytest.fixture
def closed_port_kubeconfig(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    return write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{port}"), port


def test_submit_to_an_unreachable_server_is_explained(closed_port_kubeconfig):
    kubeconfig, port = closed_port_kubeconfig
    backend = KubernetesBackend("embedopt", load_api_client(kubeconfig))
    with pytest.raises(LauncherError, match=f"cannot reach the Kubernetes API server at http://127.0.0.1:{port}"):
        backend.submit(build_objects("job", LaunchConfig()))


def test_delete_on_an_unreachable_server_is_explained(closed_port_kubeconfig):
    kubeconfig, port = closed_port_kubeconfig
    backend = KubernetesBackend("embedopt", load_api_client(kubeconfig))
    with pytest.raises(LauncherError, match=f"cannot reach the Kubernetes API server at http://127.0.0.1:{port}"):
        backend.delete("embedopt-train")


@pytest.mark.parametrize("command", [["submit"], ["delete"]])
def test_cli_prints_a_short_message_not_a_traceback(closed_port_kubeconfig, capsys, command):
    kubeconfig, _ = closed_port_kubeconfig
    assert cli.main([*command, "--kubeconfig", kubeconfig]) == 1
    err = capsys.readouterr().err
    assert "cannot reach the Kubernetes API server" in err
    assert "Traceback" not in err and len(err.splitlines()) < 8


def test_kubeconfig_that_is_not_yaml(tmp_path):
    path = tmp_path / "kubeconfig"
    path.write_text("apiVersion: v1\nclusters: [\n  - {name: x\n")
    with pytest.raises(LauncherError, match=f"the kubeconfig {path} is not valid YAML"):
        load_api_client(str(path))


@pytest.mark.parametrize("arg", ["", "   ", "#1", "  # tag"])
def test_trainer_args_the_pod_would_drop_are_refused(arg):
    with pytest.raises(ValueError, match="cannot be passed: the trainer-args ConfigMap holds one argument per line"):
        LaunchConfig(trainer_args=("--steps", "10", "--note", arg))


def test_cli_refuses_a_dropped_trainer_arg(capsys):
    assert cli.main(["render", "--", "--note", "#1"]) == 2
    assert "cannot be passed" in capsys.readouterr().err
