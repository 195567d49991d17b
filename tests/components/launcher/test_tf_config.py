"""The Indexed-Job entrypoint: TF_CONFIG derivation, table-driven, and two real worker processes."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

from components.launcher.tf_config import command_and_env, derive_tf_config, read_args_file, tf_config_from_env

REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]
ENV = {"JOB_COMPLETION_INDEX": "1", "EMBEDOPT_JOB_NAME": "train", "EMBEDOPT_SERVICE": "train-svc",
       "EMBEDOPT_WORKERS": "3", "EMBEDOPT_PORT": "2222"}


@pytest.mark.parametrize(
    "index, workers, template, hosts",
    [
        (0, 2, "{job}-{index}.{service}:{port}", ["j-0.s:2222", "j-1.s:2222"]),
        (2, 3, "{job}-{index}.{service}:{port}", ["j-0.s:2222", "j-1.s:2222", "j-2.s:2222"]),
        (1, 2, "127.0.0.1:{indexed_port}", ["127.0.0.1:2222", "127.0.0.1:2223"]),
        (3, 4, "{job}-{index}.{service}.team.svc.cluster.local:{port}",
         [f"j-{i}.s.team.svc.cluster.local:2222" for i in range(4)]),
    ],
)
def test_derive_tf_config(index, workers, template, hosts):
    config = derive_tf_config(index, "j", "s", workers, 2222, template)
    assert config == {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}


@pytest.mark.parametrize(
    "index, workers, template, match",
    [(2, 2, "{job}", r"\[0, 2\)"), (-1, 2, "{job}", "JOB_COMPLETION_INDEX"), (0, 2, "{host}:{port}", "template")],
)
def test_derive_rejects_bad_input(index, workers, template, match):
    with pytest.raises(ValueError, match=match):
        derive_tf_config(index, "j", "s", workers, 2222, template)


def test_env_with_index_derives_tf_config():
    config = json.loads(tf_config_from_env(ENV))
    assert config["task"] == {"type": "worker", "index": 1}
    assert config["cluster"]["worker"] == [f"train-{i}.train-svc:2222" for i in range(3)]


@pytest.mark.parametrize(
    "env",
    [
        {**ENV, "TF_CONFIG": '{"cluster": {"chief": ["a:1"]}, "task": {"type": "chief", "index": 0}}'},  # TFJob
        {k: v for k, v in ENV.items() if k != "JOB_COMPLETION_INDEX"},  # single-GPU Job
        {**ENV, "JOB_COMPLETION_INDEX": "0", "EMBEDOPT_WORKERS": "1"},  # one worker needs no cluster
    ],
)
def test_env_left_alone(env):
    assert tf_config_from_env(env) is None


@pytest.mark.parametrize("missing, match", [("EMBEDOPT_WORKERS", "EMBEDOPT_WORKERS"), ("EMBEDOPT_PORT", "EMBEDOPT_PORT")])
def test_env_missing_variable_is_named(missing, match):
    with pytest.raises(ValueError, match=match):
        tf_config_from_env({k: v for k, v in ENV.items() if k != missing})


def test_given_tf_config_passes_through_unchanged():
    given = '{"cluster": {"chief": ["c:2222"], "worker": ["w:2222"]}, "task": {"type": "worker", "index": 0}}'
    _, env = command_and_env(["--", "train"], {**ENV, "TF_CONFIG": given})
    assert env["TF_CONFIG"] == given


def test_command_appends_args_file(tmp_path):
    args_file = tmp_path / "trainer-args"
    args_file.write_text("# from the ConfigMap\n--data\n/data/prepared\n\n--optimizer\nlazy adam\n")
    assert read_args_file(str(args_file)) == ["--data", "/data/prepared", "--optimizer", "lazy adam"]
    command, env = command_and_env(["--args-file", str(args_file), "--", "train", "--seed", "1"], ENV)
    assert command == [sys.executable, "-m", "components.cli", "train", "--seed", "1",
                       "--data", "/data/prepared", "--optimizer", "lazy adam"]
    assert json.loads(env["TF_CONFIG"])["task"]["index"] == 1


_ALL_REDUCE = """
import json, os
import tensorflow as tf
strategy = tf.distribute.MultiWorkerMirroredStrategy()
task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
value = strategy.run(lambda: tf.constant(float(task + 1)))
total = strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
print(json.dumps({"task": task, "workers": strategy.num_replicas_in_sync, "sum": float(total)}), flush=True)
"""


def _free_port_pair() -> int:
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    raise RuntimeError("no two consecutive free ports")


def run_entrypoints(envs: list[dict[str, str]]) -> list[tuple[dict, str]]:
    """`embedopt k8s entrypoint --exec` running `_ALL_REDUCE`, one process per env, together; asserts each
    succeeded and returns (its JSON result, its stderr)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "components.cli", "k8s", "entrypoint", "--exec", "--", sys.executable, "-c", _ALL_REDUCE],
            env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for env in envs
    ]
    try:
        outputs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    return [(json.loads(out.strip().splitlines()[-1]), err) for out, err in outputs]


@pytest.mark.slow
def test_two_indexed_workers_form_a_multi_worker_cluster():
    """`embedopt k8s entrypoint` as two processes with JOB_COMPLETION_INDEX=0/1 runs a real all-reduce."""
    port = _free_port_pair()
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update({
        "EMBEDOPT_JOB_NAME": "train", "EMBEDOPT_SERVICE": "train", "EMBEDOPT_WORKERS": "2",
        "EMBEDOPT_PORT": str(port), "EMBEDOPT_WORKER_ADDRESS_TEMPLATE": "127.0.0.1:{indexed_port}",
        "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2",
    })
    results = [result for result, _ in run_entrypoints([{**env, "JOB_COMPLETION_INDEX": str(i)} for i in range(2)])]
    assert sorted(r["task"] for r in results) == [0, 1]
    assert all(r["workers"] == 2 and r["sum"] == 3.0 for r in results)
