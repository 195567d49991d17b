"""Builders, table-driven over kinds, workers, GPUs and resources; every object schema-validated."""

import pytest
from kubernetes.utils import parse_quantity

from components.launcher.builders import build_objects, shared_objects
from components.launcher.config import DataVolume, LaunchConfig, Resources, Toleration
from components.launcher.render import to_dict
from tests.components.launcher.schemas import validate

CASES = [
    ("job", 1, Resources()),
    ("job", 1, Resources(gpus=0, cpu_request="500m", cpu_limit="1", memory_request="1Gi", memory_limit="2Gi")),
    ("indexed", 2, Resources()),
    ("indexed", 4, Resources(gpus=8, cpu_request="32", cpu_limit="64", memory_request="200Gi", memory_limit="400Gi")),
    ("indexed", 3, Resources(gpus=0)),
    ("tfjob", 1, Resources()),
    ("tfjob", 2, Resources(gpus=2)),
    ("tfjob", 5, Resources(gpus=0)),
    ("trainjob", 1, Resources()),
    ("trainjob", 2, Resources(gpus=2)),
    ("trainjob", 4, Resources(gpus=0, cpu_request="500m", cpu_limit="1", memory_request="1Gi", memory_limit="2Gi")),
]
WORKLOAD = {"job": "Job", "indexed": "Job", "tfjob": "TFJob", "trainjob": "TrainJob"}


def _render(kind, workers, resources, **overrides):
    config = LaunchConfig(workers=workers, resources=resources, **overrides)
    objects = [to_dict(o) for o in shared_objects(config) + build_objects(kind, config)]
    return config, {o["kind"]: o for o in objects}, objects


def _pod_specs(kind, objects_by_kind):
    if kind == "tfjob":
        return {t: r["template"]["spec"] for t, r in objects_by_kind["TFJob"]["spec"]["tfReplicaSpecs"].items()}
    if kind == "trainjob":
        (node,) = objects_by_kind["TrainingRuntime"]["spec"]["template"]["spec"]["replicatedJobs"]
        return {"node": node["template"]["spec"]["template"]["spec"]}
    return {"pod": objects_by_kind["Job"]["spec"]["template"]["spec"]}


@pytest.mark.parametrize("kind, workers, resources", CASES)
def test_every_object_is_schema_valid(kind, workers, resources):
    _, _, objects = _render(kind, workers, resources)
    for obj in objects:
        validate(obj)


@pytest.mark.parametrize("kind, workers, resources", CASES)
def test_objects_per_kind(kind, workers, resources):
    _, by_kind, objects = _render(kind, workers, resources)
    expected = {"job": {"Job"}, "indexed": {"Job", "Service"}, "tfjob": {"TFJob"},
                "trainjob": {"TrainingRuntime", "TrainJob"}}[kind]
    assert {o["kind"] for o in objects} == {"Namespace", "PersistentVolumeClaim", "ConfigMap"} | expected


@pytest.mark.parametrize("kind, workers, resources", CASES)
def test_resources_requests_and_limits(kind, workers, resources):
    _, by_kind, _ = _render(kind, workers, resources)
    for spec in _pod_specs(kind, by_kind).values():
        (c,) = spec["containers"]
        assert c["resources"]["requests"]["cpu"] == resources.cpu_request
        assert c["resources"]["limits"]["cpu"] == resources.cpu_limit
        assert c["resources"]["requests"]["memory"] == resources.memory_request
        assert c["resources"]["limits"]["memory"] == resources.memory_limit
        gpus = c["resources"]["limits"].get("nvidia.com/gpu")
        assert gpus == (str(resources.gpus) if resources.gpus else None)
        assert c["resources"]["requests"].get("nvidia.com/gpu") == gpus


@pytest.mark.parametrize("kind, workers, resources", CASES)
def test_containers_are_hardened(kind, workers, resources):
    _, by_kind, _ = _render(kind, workers, resources)
    for spec in _pod_specs(kind, by_kind).values():
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["automountServiceAccountToken"] is False
        (c,) = spec["containers"]
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and sc["runAsUser"] == 1000
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]], "a read-only root needs a writable /tmp"
        assert volumes[mounts["/tmp"]]["emptyDir"] == {"sizeLimit": "10Gi"}
        shm = volumes[mounts["/dev/shm"]]["emptyDir"]
        assert shm["medium"] == "Memory"
        # memory-backed: counted against the memory limit, so by default a quarter of it
        assert parse_quantity(shm["sizeLimit"]) == parse_quantity(resources.memory_limit) / 4
        assert c["args"][:2] == ["k8s", "entrypoint"] and c["args"][-1] == "train"


@pytest.mark.parametrize("workers", [1, 2, 7])
def test_indexed_job_shape(workers):
    config, by_kind, _ = _render("indexed", workers, Resources())
    job, service = by_kind["Job"], by_kind["Service"]
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == workers
    assert spec["backoffLimitPerIndex"] == config.backoff_limit_per_index
    assert spec["template"]["spec"]["restartPolicy"] == "Never"  # required by podFailurePolicy
    actions = {r["action"] for r in spec["podFailurePolicy"]["rules"]}
    assert actions == {"Ignore", "FailJob"}
    # Pod DNS <job>-<i>.<subdomain> must resolve through the headless Service.
    assert spec["template"]["spec"]["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    env = {e["name"]: e["value"] for e in spec["template"]["spec"]["containers"][0]["env"]}
    assert env["EMBEDOPT_WORKERS"] == str(workers)
    assert env["EMBEDOPT_JOB_NAME"] == job["metadata"]["name"]
    assert env["EMBEDOPT_SERVICE"] == service["metadata"]["name"]
    assert env["EMBEDOPT_PORT"] == str(config.port)


@pytest.mark.parametrize("workers", [1, 2, 5])
def test_tfjob_has_chief_and_workers(workers):
    _, by_kind, _ = _render("tfjob", workers, Resources())
    replicas = by_kind["TFJob"]["spec"]["tfReplicaSpecs"]
    assert replicas["Chief"]["replicas"] == 1
    assert replicas.get("Worker", {"replicas": 0})["replicas"] == workers - 1
    for replica in replicas.values():
        (c,) = replica["template"]["spec"]["containers"]
        assert c["name"] == "tensorflow"
        assert not any(e["name"] == "TF_CONFIG" for e in c["env"]), "the operator sets TF_CONFIG"


def test_trainer_args_go_into_the_config_map():
    _, by_kind, _ = _render("job", 1, Resources(), trainer_args=("--train-steps", "5", "--optimizer", "lazy adam"))
    assert by_kind["ConfigMap"]["data"]["trainer-args"] == "--train-steps\n5\n--optimizer\nlazy adam\n"


def test_host_path_volume_replaces_the_claim():
    volume = DataVolume(claim_name=None, host_path="/mnt/embedopt")
    _, by_kind, objects = _render("job", 1, Resources(), volume=volume)
    assert "PersistentVolumeClaim" not in by_kind
    data = next(v for v in by_kind["Job"]["spec"]["template"]["spec"]["volumes"] if v["name"] == "data")
    assert data["hostPath"]["path"] == "/mnt/embedopt"
    for obj in objects:
        validate(obj)


def test_scheduling_options_are_rendered():
    _, by_kind, objects = _render(
        "indexed", 2, Resources(),
        service_account="trainer", node_selector={"cloud.google.com/gke-accelerator": "nvidia-l4"},
        tolerations=(Toleration(), Toleration(key="dedicated", operator="Equal", value="ml", effect="NoExecute")),
    )
    spec = by_kind["Job"]["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "trainer"
    assert spec["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert [t["key"] for t in spec["tolerations"]] == ["nvidia.com/gpu", "dedicated"]
    for obj in objects:
        validate(obj)


def test_schema_check_catches_a_broken_object():
    _, by_kind, _ = _render("tfjob", 2, Resources())
    broken = dict(by_kind["TFJob"], spec={"tfReplicaSpecs": {"Chief": {"replicas": "one"}}})
    with pytest.raises(Exception, match="one"):
        validate(broken)
    job = by_kind.get("Job") or _render("job", 1, Resources())[1]["Job"]
    bad_job = dict(job, spec=dict(job["spec"], completionMode=3))
    with pytest.raises(Exception):
        validate(bad_job)


@pytest.mark.parametrize("kind, workers", [("job", 1), ("indexed", 2), ("tfjob", 2), ("trainjob", 2)])
def test_active_deadline_sets_active_deadline_seconds(kind, workers):
    _, by_kind, objects = _render(kind, workers, Resources(), active_deadline_seconds=7200)
    workload = by_kind[WORKLOAD[kind]]
    spec = workload["spec"]["runPolicy"] if kind == "tfjob" else workload["spec"]
    assert spec["activeDeadlineSeconds"] == 7200
    for obj in objects:
        validate(obj)
    _, by_kind, _ = _render(kind, workers, Resources())
    assert "activeDeadlineSeconds" not in str(by_kind[WORKLOAD[kind]]), "no deadline unless asked for"


def test_size_limits_are_configurable_and_checked():
    _, by_kind, _ = _render("indexed", 2, Resources(), tmp_size_limit="2Gi", shm_size_limit="1Gi")
    volumes = {v["name"]: v for v in by_kind["Job"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tmp"]["emptyDir"]["sizeLimit"] == "2Gi"
    assert volumes["dshm"]["emptyDir"]["sizeLimit"] == "1Gi"
    with pytest.raises(ValueError, match="shm_size_limit='64Gi' exceeds memory_limit='32Gi'"):
        LaunchConfig(shm_size_limit="64Gi")
    with pytest.raises(ValueError, match="tmp_size_limit"):
        LaunchConfig(tmp_size_limit="lots")
