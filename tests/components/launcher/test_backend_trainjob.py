"""`--kind trainjob` through the real kubernetes client against a fake API server: submit, refresh, status, delete."""

import pytest

from components.launcher import cli
from components.launcher.builders import build_objects
from components.launcher.config import LaunchConfig
from components.launcher.errors import LauncherError
from tests.components.launcher.fake_apiserver import (
    CONFIGMAPS, JOBS, NS, PODS, SERVICES, status_body, write_kubeconfig,
)
from tests.components.launcher.test_backend_errors import _backend, _pod

TRAINER = "/apis/trainer.kubeflow.org/v1alpha1"
TRAINJOBS = f"{TRAINER}/namespaces/{NS}/trainjobs"
RUNTIMES = f"{TRAINER}/namespaces/{NS}/trainingruntimes"
CLUSTER_RUNTIMES = f"{TRAINER}/clustertrainingruntimes"
CREATED = (201, {"kind": "Status", "apiVersion": "v1", "metadata": {}})
OK = (200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}})


def _posts(server):
    return [(p, body) for m, p, _, body in server.requests if m == "POST"]


@pytest.mark.parametrize("cluster_runtime, runtime_path", [(False, RUNTIMES), (True, CLUSTER_RUNTIMES)])
def test_submit_creates_config_map_runtime_then_trainjob(server, tmp_path, cluster_runtime, runtime_path):
    server.routes[("POST", runtime_path)] = CREATED
    server.routes[("POST", TRAINJOBS)] = CREATED
    config = LaunchConfig(workers=3, cluster_runtime=cluster_runtime)
    lines = _backend(server, tmp_path).submit(build_objects("trainjob", config))
    kind = "clustertrainingruntime" if cluster_runtime else "trainingruntime"
    assert lines == ["configmap/embedopt-train-trainer-args created", f"{kind}/embedopt-train-tensorflow created",
                     "trainjob/embedopt-train created"]
    posts = _posts(server)
    assert [p for p, _ in posts] == [CONFIGMAPS, runtime_path, TRAINJOBS]
    assert posts[2][1]["spec"]["trainer"]["numNodes"] == 3


@pytest.mark.parametrize("cluster_runtime, runtime_path", [(False, RUNTIMES), (True, CLUSTER_RUNTIMES)])
def test_an_existing_runtime_is_replaced_with_its_resource_version(server, tmp_path, cluster_runtime, runtime_path):
    """Custom objects are only replaced with the stored resourceVersion; the new pod settings must win."""
    name = "embedopt-train-tensorflow"
    server.routes[("POST", runtime_path)] = (409, status_body(409, "AlreadyExists", "exists", "trainingruntimes", name))
    server.routes[("GET", f"{runtime_path}/{name}")] = (200, {"metadata": {"name": name, "resourceVersion": "4711"}})
    server.routes[("PUT", f"{runtime_path}/{name}")] = (200, {"metadata": {"name": name}})
    server.routes[("POST", TRAINJOBS)] = CREATED
    config = LaunchConfig(workers=2, image="reg.example/embedopt:2", cluster_runtime=cluster_runtime)
    lines = _backend(server, tmp_path).submit(build_objects("trainjob", config))
    assert lines[1].endswith(f"/{name} replaced")
    (put,) = [body for m, p, _, body in server.requests if m == "PUT"]
    assert put["metadata"]["resourceVersion"] == "4711"
    (node,) = put["spec"]["template"]["spec"]["replicatedJobs"]
    assert node["template"]["spec"]["template"]["spec"]["containers"][0]["image"] == "reg.example/embedopt:2"


def test_existing_trainjob_is_a_clear_conflict(server, tmp_path):
    server.routes[("POST", RUNTIMES)] = CREATED
    server.routes[("POST", TRAINJOBS)] = (409, status_body(409, "AlreadyExists", "exists", "trainjobs"))
    with pytest.raises(LauncherError, match="already exists.*embedopt k8s delete"):
        _backend(server, tmp_path).submit(build_objects("trainjob", LaunchConfig(workers=2)))


def test_missing_trainer_v2_is_named(server, tmp_path):
    """No Trainer v2 CRDs: the 404 '404 page not found' of an unknown resource says what to install."""
    with pytest.raises(LauncherError, match=r"trainingruntimes.trainer.kubeflow.org resource is unknown.*"
                                            r"Kubeflow Trainer v2 is not installed.*ref=v2.3.0.*--kind indexed"):
        _backend(server, tmp_path).submit(build_objects("trainjob", LaunchConfig(workers=2)))


@pytest.mark.parametrize(
    "conditions, state",
    [
        ([{"type": "Complete", "status": "True", "message": "done"}], "Succeeded"),
        ([{"type": "Failed", "status": "True", "message": "DeadlineExceeded"}], "Failed"),
        ([{"type": "Suspended", "status": "False"}], "Running"),
    ],
)
def test_status_of_a_trainjob(server, tmp_path, conditions, state):
    server.routes[("GET", f"{TRAINJOBS}/embedopt-train")] = (200, {
        "kind": "TrainJob", "metadata": {"name": "embedopt-train"}, "status": {"conditions": conditions}})
    server.routes[("GET", PODS)] = (200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [
        _pod("embedopt-train-node-0-1-abcde", 1), _pod("embedopt-train-node-0-0-fghij", 0, "ErrImagePull")]})
    status = _backend(server, tmp_path).status("trainjob", "embedopt-train")
    assert status.state == state
    assert [w.index for w in status.workers] == [0, 1]  # from batch.kubernetes.io/job-completion-index
    assert "cannot pull image" in status.workers[0].problems[0]


def test_status_of_a_missing_trainjob_is_not_found(server, tmp_path):
    server.routes[("GET", f"{TRAINJOBS}/gone")] = (404, status_body(404, "NotFound", "not found", "trainjobs", "gone"))
    assert _backend(server, tmp_path).status("trainjob", "gone").state == "NotFound"


def test_delete_removes_the_trainjob_and_its_namespaced_runtime(server, tmp_path):
    listed = lambda names: (200, {"kind": "List", "apiVersion": "v1", "metadata": {}, "items": [{"metadata": {"name": n}} for n in names]})
    server.routes[("GET", TRAINJOBS)] = listed(["embedopt-train"])
    server.routes[("GET", RUNTIMES)] = listed(["embedopt-train-tensorflow"])
    server.routes[("GET", CONFIGMAPS)] = listed(["embedopt-train-trainer-args"])
    server.routes[("GET", JOBS)] = listed([])  # JobSet's Jobs carry no embedopt labels: the TrainJob owns them
    server.routes[("GET", SERVICES)] = listed([])
    for path in (f"{TRAINJOBS}/embedopt-train", f"{RUNTIMES}/embedopt-train-tensorflow",
                 f"{CONFIGMAPS}/embedopt-train-trainer-args"):
        server.routes[("DELETE", path)] = OK
    deleted = _backend(server, tmp_path).delete("embedopt-train")  # no TFJob CRD: skipped
    assert deleted == ["trainjob/embedopt-train", "trainingruntime/embedopt-train-tensorflow",
                       "configmap/embedopt-train-trainer-args"]
    assert not any(p.startswith(CLUSTER_RUNTIMES) for _, p, _, _ in server.requests), "cluster runtimes are kept"


def test_cli_submit_trainjob_server_dry_run(server, tmp_path, capsys):
    server.routes[("POST", RUNTIMES)] = CREATED
    server.routes[("POST", TRAINJOBS)] = CREATED
    server.routes[("POST", f"/api/v1/namespaces/{NS}/persistentvolumeclaims")] = CREATED
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server.url)
    assert cli.main(["submit", "--kind", "trainjob", "--workers", "2", "--dry-run", "server", "--kubeconfig", kubeconfig,
                     "--", "--data", "/data/prepared", "--train-steps", "10", "--table-sharding", "row"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "trainjob/embedopt-train created (server dry run)"
    assert all(q.get("dryRun") == ["All"] for m, _, q, _ in server.requests if m == "POST")
