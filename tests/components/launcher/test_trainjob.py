"""Kubeflow Trainer v2: the TensorFlow runtime and its TrainJob, validated against the Trainer v2.3.0 and JobSet v0.12.0 CRDs."""

import copy
import re

import jsonschema
import pytest

from components.launcher.builders import build_objects, shared_objects
from components.launcher.config import LaunchConfig, Resources
from components.launcher.render import to_dict
from tests.components.launcher.schemas import crd_schema, jobset_of_runtime, validate

CONFIGS = [
    LaunchConfig(workers=1),
    LaunchConfig(workers=2),
    LaunchConfig(workers=8, resources=Resources(gpus=4), active_deadline_seconds=86400),
    LaunchConfig(workers=3, resources=Resources(gpus=0), cluster_runtime=True),
    LaunchConfig(name="ctr", namespace="team-a", workers=16, cluster_runtime=True, service_account="trainer"),
]
# The failure policy rule name pattern stated in the JobSet v0.12.0 CRD.
RULE_NAME = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")


def _render(config):
    objects = [to_dict(o) for o in shared_objects(config) + build_objects("trainjob", config)]
    runtime = next(o for o in objects if o["kind"].endswith("TrainingRuntime"))
    return objects, runtime, next(o for o in objects if o["kind"] == "TrainJob")


def _node(runtime):
    (node,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    return node


def _env(container):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.workers}w-cluster{int(c.cluster_runtime)}")
def test_every_object_validates_against_its_crd(config):
    objects, runtime, _ = _render(config)
    assert [o["kind"] for o in objects][-3:] == [
        "ConfigMap", "ClusterTrainingRuntime" if config.cluster_runtime else "TrainingRuntime", "TrainJob"]
    for obj in objects:
        validate(obj)  # the runtime also as a JobSet (jobset.x-k8s.io/v1alpha2)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.workers}w-cluster{int(c.cluster_runtime)}")
def test_trainjob_references_its_runtime(config):
    _, runtime, trainjob = _render(config)
    ref = trainjob["spec"]["runtimeRef"]
    assert ref == {"apiGroup": "trainer.kubeflow.org", "kind": runtime["kind"], "name": runtime["metadata"]["name"]}
    assert trainjob["metadata"]["namespace"] == config.namespace
    # A ClusterTrainingRuntime is cluster-scoped; a TrainingRuntime must share the TrainJob's namespace.
    assert runtime["metadata"].get("namespace") == (None if config.cluster_runtime else config.namespace)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.workers}w-cluster{int(c.cluster_runtime)}")
def test_node_count_comes_from_workers_everywhere(config):
    """TrainJob numNodes overrides the runtime's mlPolicy.numNodes, so both, and the pods' EMBEDOPT_WORKERS, agree."""
    _, runtime, trainjob = _render(config)
    node = _node(runtime)
    job = node["template"]["spec"]
    (container,) = job["template"]["spec"]["containers"]
    assert trainjob["spec"]["trainer"]["numNodes"] == runtime["spec"]["mlPolicy"]["numNodes"] == config.workers
    assert job["parallelism"] == job["completions"] == config.workers
    assert trainjob["spec"]["trainer"]["env"] == [{"name": "EMBEDOPT_WORKERS", "value": str(config.workers)}]
    assert _env(container)["EMBEDOPT_WORKERS"] == str(config.workers)


def test_runtime_has_the_shape_trainer_v2_fills_in():
    """Trainer v2.3.0 sets numNodes, image, args and env only on the 'trainer' ancestor job's container named 'node'."""
    _, runtime, _ = _render(LaunchConfig(workers=2))
    assert runtime["metadata"]["labels"]["trainer.kubeflow.org/framework"] == "tensorflow"
    # No torch/mpi/jax/xgboost/flux policy: Trainer's PlainML plugin applies numNodes and env.
    assert runtime["spec"]["mlPolicy"] == {"numNodes": 2}
    node = _node(runtime)
    assert node["name"] == "node" and node["replicas"] == 1
    assert node["template"]["metadata"]["labels"] == {"trainer.kubeflow.org/trainjob-ancestor-step": "trainer"}
    job = node["template"]["spec"]
    assert job["completionMode"] == "Indexed"  # JOB_COMPLETION_INDEX and <job>-<index> hostnames
    (container,) = job["template"]["spec"]["containers"]
    assert container["name"] == "node"
    assert container["args"] == ["k8s", "entrypoint", "--args-file", "/etc/embedopt/trainer-args", "--", "train"]
    assert runtime["spec"]["template"]["spec"]["network"] == {"enableDNSHostnames": True, "publishNotReadyAddresses": True}
    fields = {k: v["fieldRef"]["fieldPath"] for k, v in _env(container).items() if isinstance(v, dict)}
    assert fields == {
        "EMBEDOPT_JOBSET_NAME": "metadata.annotations['jobset.sigs.k8s.io/jobset-name']",
        "EMBEDOPT_REPLICATED_JOB": "metadata.annotations['jobset.sigs.k8s.io/replicatedjob-name']",
        "EMBEDOPT_JOB_INDEX": "metadata.annotations['jobset.sigs.k8s.io/job-index']",
    }


def test_pods_match_the_other_kinds():
    """Same image, hardened pod, resources, data volume and trainer-args ConfigMap as the Indexed Job."""
    config = LaunchConfig(workers=2, image="reg.example/embedopt:1")
    _, runtime, _ = _render(config)
    indexed = to_dict(build_objects("indexed", config)[-1])["spec"]["template"]["spec"]
    pod = _node(runtime)["template"]["spec"]["template"]["spec"]
    for key in ("securityContext", "volumes", "tolerations", "automountServiceAccountToken", "restartPolicy"):
        assert pod[key] == indexed[key], key
    for key in ("image", "resources", "securityContext", "volumeMounts", "args", "ports"):
        assert pod["containers"][0][key] == indexed["containers"][0][key], key


def test_a_failed_worker_restarts_the_whole_jobset_and_a_usage_error_fails_it():
    config = LaunchConfig(workers=4, backoff_limit_per_index=5)
    _, runtime, _ = _render(config)
    jobset = runtime["spec"]["template"]["spec"]
    job = _node(runtime)["template"]["spec"]
    assert job["backoffLimit"] == 0 and jobset["failurePolicy"]["maxRestarts"] == 5
    (rule,) = jobset["failurePolicy"]["rules"]
    assert RULE_NAME.match(rule["name"])
    assert rule["action"] == "FailJobSet" and rule["onJobFailureReasons"] == ["PodFailurePolicy"]
    fail = next(r for r in job["podFailurePolicy"]["rules"] if r["action"] == "FailJob")
    assert fail["onExitCodes"] == {"containerName": "node", "operator": "In", "values": [2]}


@pytest.mark.parametrize(
    "kind, path, value",
    [
        ("TrainJob", ("spec", "trainer", "nodes"), 2),  # a typo of numNodes
        ("TrainJob", ("spec", "trainer", "numNodes"), "two"),
        ("TrainingRuntime", ("spec", "mlPolicy", "tensorflow"), {}),  # there is no TF policy
        ("TrainingRuntime", ("spec", "template", "spec", "replicatedJobs", 0, "template", "spec", "template", "spec",
                             "containers", 0, "securityContext", "runAsRoot"), True),
        ("JobSet", ("spec", "network", "enableDNSHostname"), True),
        ("JobSet", ("spec", "failurePolicy", "rules", 0, "action"), "Retry"),
    ],
)
def test_schema_check_catches_a_broken_object(kind, path, value):
    _, runtime, trainjob = _render(LaunchConfig(workers=2))
    obj = copy.deepcopy({"TrainJob": trainjob, "TrainingRuntime": runtime, "JobSet": jobset_of_runtime(runtime)}[kind])
    validate(obj) if kind != "JobSet" else jsonschema.validate(obj, crd_schema("JobSet"))
    target = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(obj, crd_schema(kind))
