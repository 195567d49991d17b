"""TF_CONFIG for Trainer v2 / JobSet pods, from the environment a JobSet pod really gets; then two real workers.

`jobset_pod` rebuilds what a pod of the runtime's replicatedJob carries,
from the sources rather than from our code:

- JobSet v0.12.0 (pkg/controllers/jobset_controller.go): Job
  `<jobset>-<rjob>-<jobIndex>`; `labelAndAnnotateObject` puts
  `jobset.sigs.k8s.io/{jobset-name,replicatedjob-name,job-index,...}` on the
  pod template as labels and annotations; with DNS hostnames on (the
  default) the pod's subdomain is the JobSet name, behind a headless Service.
- The Job controller (Indexed completion, JobSet's default): annotation
  `batch.kubernetes.io/job-completion-index`, env `JOB_COMPLETION_INDEX`,
  hostname `<job>-<index>`.
- Trainer v2.3.0: the JobSet is named like the TrainJob, the TrainJob's
  `trainer.env` is upserted into the `node` container (PlainML plugin), and
  the endpoints are `<trainjob>-<rjob>-<jobIndex>-<podIndex>.<subdomain>`
  (`IdentifyPodNetwork`).

The container's env is then resolved from the rendered runtime, values and
Downward API `fieldRef`s alike, the way the kubelet would.
"""

import json
import os
import re

import pytest

from components.launcher.builders import build_objects
from components.launcher.config import LaunchConfig
from components.launcher.render import to_dict
from components.launcher.tf_config import tf_config_from_env
from tests.components.launcher.test_tf_config import _free_port_pair, run_entrypoints

_FIELD = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")


def _rendered(config):
    objects = [to_dict(o) for o in build_objects("trainjob", config)]
    runtime, trainjob = objects[1], objects[2]
    (node,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    return trainjob, node


def jobset_pod(trainjob: dict, node: dict, job_index: int, pod_index: int) -> dict:
    """metadata, hostname and subdomain of pod `pod_index` of Job `job_index` of `node`, as JobSet creates it."""
    jobset, rjob = trainjob["metadata"]["name"], node["name"]
    job_name = f"{jobset}-{rjob}-{job_index}"
    jobset_meta = {
        "jobset.sigs.k8s.io/jobset-name": jobset,
        "jobset.sigs.k8s.io/jobset-uid": "3f9a7c1e-0000-4000-8000-000000000000",
        "jobset.sigs.k8s.io/replicatedjob-name": rjob,
        "jobset.sigs.k8s.io/replicatedjob-replicas": str(node["replicas"]),
        "jobset.sigs.k8s.io/global-replicas": str(node["replicas"]),
        "jobset.sigs.k8s.io/job-index": str(job_index),
        "jobset.sigs.k8s.io/job-global-index": str(job_index),
        "jobset.sigs.k8s.io/job-key": "0f1e2d3c4b5a",
        "jobset.sigs.k8s.io/restart-attempt": "0",
        "jobset.sigs.k8s.io/group-name": "default",
        "jobset.sigs.k8s.io/group-replicas": str(node["replicas"]),
        "jobset.sigs.k8s.io/job-group-index": str(job_index),
    }
    template_labels = node["template"]["spec"]["template"]["metadata"]["labels"]
    return {
        "labels": {**template_labels, **jobset_meta, "batch.kubernetes.io/job-completion-index": str(pod_index),
                   "job-name": job_name},
        "annotations": {**jobset_meta, "batch.kubernetes.io/job-completion-index": str(pod_index)},
        "hostname": f"{job_name}-{pod_index}",
        "subdomain": jobset,
        "job_completion_index": str(pod_index),
    }


def container_env(trainjob: dict, node: dict, pod: dict) -> dict[str, str]:
    """The `node` container's environment in that pod: runtime env, TrainJob env upserted, Job controller env."""
    (container,) = node["template"]["spec"]["template"]["spec"]["containers"]
    env = {}
    for var in container["env"] + trainjob["spec"]["trainer"].get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            where, key = _FIELD.match(var["valueFrom"]["fieldRef"]["fieldPath"]).groups()
            # KeyError: the runtime reads a label or annotation JobSet does not set (the kubelet would pass "").
            env[var["name"]] = pod[where][key]
    env["JOB_COMPLETION_INDEX"] = pod["job_completion_index"]
    env["HOSTNAME"] = pod["hostname"]
    return env


@pytest.mark.parametrize("name, workers, port", [("embedopt-train", 2, 2222), ("ctr", 5, 3333), ("a", 16, 2222)])
def test_tf_config_from_a_jobset_pods_environment(name, workers, port):
    trainjob, node = _rendered(LaunchConfig(name=name, workers=workers, port=port))
    # The endpoints Trainer v2.3.0 computes for the trainer pods (IdentifyPodNetwork).
    endpoints = [f"{name}-node-0-{i}.{name}:{port}" for i in range(workers)]
    for i in range(workers):
        pod = jobset_pod(trainjob, node, job_index=0, pod_index=i)
        config = json.loads(tf_config_from_env(container_env(trainjob, node, pod)))
        assert config == {"cluster": {"worker": endpoints}, "task": {"type": "worker", "index": i}}
        # The address a worker announces is its own pod's DNS name.
        assert config["cluster"]["worker"][i] == f"{pod['hostname']}.{pod['subdomain']}:{port}"


def test_one_node_needs_no_cluster():
    trainjob, node = _rendered(LaunchConfig(workers=1))
    assert tf_config_from_env(container_env(trainjob, node, jobset_pod(trainjob, node, 0, 0))) is None


def test_trainjob_env_overrides_the_runtime_worker_count():
    """A TrainJob may scale a shared runtime: its numNodes and EMBEDOPT_WORKERS win over the runtime's."""
    trainjob, _ = _rendered(LaunchConfig(workers=4))
    _, node = _rendered(LaunchConfig(workers=2))
    config = json.loads(tf_config_from_env(container_env(trainjob, node, jobset_pod(trainjob, node, 0, 3))))
    assert len(config["cluster"]["worker"]) == 4 and config["task"]["index"] == 3


def test_given_tf_config_is_left_alone():
    trainjob, node = _rendered(LaunchConfig(workers=2))
    env = container_env(trainjob, node, jobset_pod(trainjob, node, 0, 1))
    assert tf_config_from_env({**env, "TF_CONFIG": '{"cluster": {}}'}) is None


@pytest.mark.parametrize(
    "change, match",
    [
        ({"EMBEDOPT_JOB_INDEX": "1"}, r"EMBEDOPT_JOB_INDEX=1: the workers must be the pods of one Indexed Job"),
        ({"EMBEDOPT_REPLICATED_JOB": ""}, "JOB_COMPLETION_INDEX is set but EMBEDOPT_REPLICATED_JOB is not"),
        ({"EMBEDOPT_JOB_INDEX": "zero"}, "EMBEDOPT_JOB_INDEX='zero' must be an integer"),
        ({"JOB_COMPLETION_INDEX": "2"}, r"JOB_COMPLETION_INDEX=2 must be in \[0, 2\)"),
    ],
)
def test_bad_jobset_environment_is_named(change, match):
    trainjob, node = _rendered(LaunchConfig(workers=2))
    env = container_env(trainjob, node, jobset_pod(trainjob, node, 0, 1))
    with pytest.raises(ValueError, match=match):
        tf_config_from_env({**env, **change})


@pytest.mark.slow
def test_two_jobset_pods_form_a_multi_worker_cluster():
    """Two `embedopt k8s entrypoint` processes with JobSet pod environments run a real all-reduce."""
    trainjob, node = _rendered(LaunchConfig(workers=2))
    port = _free_port_pair()
    base = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "HOSTNAME")}
    base.update({"CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2", "EMBEDOPT_PORT": str(port),
                 # Both pods on one host: localhost ports instead of the pods' DNS names.
                 "EMBEDOPT_WORKER_ADDRESS_TEMPLATE": "127.0.0.1:{indexed_port}"})
    envs = [{**container_env(trainjob, node, jobset_pod(trainjob, node, 0, i)), **base} for i in range(2)]
    results = []
    for result, err in run_entrypoints(envs):
        assert "derived TF_CONFIG=" in err, "the entrypoint, not the test, must set TF_CONFIG"
        results.append(result)
    assert sorted(r["task"] for r in results) == [0, 1]
    assert all(r["workers"] == 2 and r["sum"] == 3.0 for r in results)
