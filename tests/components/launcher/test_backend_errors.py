"""The real kubernetes client against a fake API server on localhost: errors explained, objects found by labels."""

import socket

import pytest

from components.launcher import cli
from components.launcher.backend import KubernetesBackend, load_api_client
from components.launcher.builders import build_objects
from components.launcher.config import LaunchConfig
from components.launcher.errors import LauncherError
from tests.components.launcher.fake_apiserver import (
    CONFIGMAPS, JOBS, NS, PODS, SERVICES, TFJOBS, status_body, write_kubeconfig,
)


def _backend(server, tmp_path):
    return KubernetesBackend(NS, load_api_client(write_kubeconfig(tmp_path / "kubeconfig", server.url)))


def _pod(name, index, waiting_reason=None, image="registry.example/embedopt:missing"):
    state = {"waiting": {"reason": waiting_reason, "message": "Back-off pulling image"}} if waiting_reason else {"running": {}}
    return {
        "metadata": {"name": name, "namespace": NS, "creationTimestamp": "2025-01-01T00:00:00Z",
                     "annotations": {"batch.kubernetes.io/job-completion-index": str(index)}},
        "status": {"phase": "Pending" if waiting_reason else "Running", "containerStatuses": [
            {"name": "trainer", "image": image, "imageID": "", "ready": False, "restartCount": 0, "state": state}]},
    }


def test_forbidden_explains_rbac(server, tmp_path):
    server.routes[("POST", JOBS)] = (403, status_body(403, "Forbidden", 'jobs.batch is forbidden: User "tester" cannot create resource "jobs"'))
    with pytest.raises(LauncherError, match=r"forbidden by RBAC \(403\).*kubectl auth can-i create jobs.batch -n embedopt"):
        _backend(server, tmp_path).submit(build_objects("job", LaunchConfig()))


def test_missing_tfjob_crd_is_named(server, tmp_path):
    with pytest.raises(LauncherError, match="training operator's CRD is not installed.*--kind indexed"):
        _backend(server, tmp_path).submit(build_objects("tfjob", LaunchConfig(workers=2)))
    assert ("POST", TFJOBS) in [(m, p) for m, p, _, _ in server.requests]


def test_missing_namespace_is_named(server, tmp_path):
    server.routes[("POST", CONFIGMAPS)] = (404, status_body(404, "NotFound", 'namespaces "embedopt" not found', "namespaces", NS))
    with pytest.raises(LauncherError, match="namespace 'embedopt' does not exist.*kubectl create namespace embedopt"):
        _backend(server, tmp_path).submit(build_objects("job", LaunchConfig()))


def test_existing_job_is_a_clear_conflict(server, tmp_path):
    server.routes[("POST", JOBS)] = (409, status_body(409, "AlreadyExists", 'jobs.batch "embedopt-train" already exists', "jobs"))
    with pytest.raises(LauncherError, match="already exists.*embedopt k8s delete"):
        _backend(server, tmp_path).submit(build_objects("job", LaunchConfig()))


def test_server_dry_run_sends_dry_run_all(server, tmp_path):
    server.routes[("POST", JOBS)] = (201, {"kind": "Job", "apiVersion": "batch/v1", "metadata": {"name": "embedopt-train"}})
    lines = _backend(server, tmp_path).submit(build_objects("indexed", LaunchConfig(workers=2)), dry_run=True)
    assert lines == [f"{k}/{n} created (server dry run)" for k, n in
                     [("configmap", "embedopt-train-trainer-args"), ("service", "embedopt-train"), ("job", "embedopt-train")]]
    posts = [(p, q, body) for m, p, q, body in server.requests if m == "POST"]
    assert [p for p, _, _ in posts] == [CONFIGMAPS, SERVICES, JOBS]
    assert all(q.get("dryRun") == ["All"] for _, q, _ in posts)
    assert posts[2][2]["spec"]["completionMode"] == "Indexed"


def test_unreachable_cluster(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    backend = KubernetesBackend(NS, load_api_client(write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{port}")))
    with pytest.raises(LauncherError, match=f"cannot reach the Kubernetes API server at http://127.0.0.1:{port}.*kubectl cluster-info"):
        backend.status("job", "embedopt-train")


def test_no_kubeconfig(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    with pytest.raises(LauncherError, match="no usable Kubernetes configuration.*--kubeconfig"):
        load_api_client()


def test_unknown_context(server, tmp_path):
    with pytest.raises(LauncherError, match="no usable Kubernetes configuration.*nope"):
        load_api_client(write_kubeconfig(tmp_path / "kubeconfig", server.url), context="nope")


def test_status_reports_image_pull_failure_per_worker(server, tmp_path):
    server.routes[("GET", f"{JOBS}/embedopt-train")] = (200, {"kind": "Job", "apiVersion": "batch/v1",
        "metadata": {"name": "embedopt-train"}, "status": {"active": 2}})
    server.routes[("GET", PODS)] = (200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [
        _pod("embedopt-train-0-abcde", 0), _pod("embedopt-train-1-fghij", 1, "ImagePullBackOff")]})
    status = _backend(server, tmp_path).status("indexed", "embedopt-train")
    assert status.state == "Running"
    assert [(w.index, w.phase) for w in status.workers] == [(0, "Running"), (1, "Pending")]
    assert status.workers[0].problems == []
    (problem,) = status.workers[1].problems
    assert "cannot pull image 'registry.example/embedopt:missing': ImagePullBackOff" in problem
    assert "imagePullSecret" in problem
    (_, _, query, _), = [r for r in server.requests if r[1] == PODS]
    assert query["labelSelector"] == ["app.kubernetes.io/name=embedopt,app.kubernetes.io/instance=embedopt-train"]


def test_status_of_missing_job_is_not_found(server, tmp_path):
    server.routes[("GET", f"{JOBS}/gone")] = (404, status_body(404, "NotFound", 'jobs.batch "gone" not found', "jobs", "gone"))
    assert _backend(server, tmp_path).status("job", "gone").state == "NotFound"


def test_status_of_finished_tfjob(server, tmp_path):
    server.routes[("GET", f"{TFJOBS}/embedopt-train")] = (200, {"kind": "TFJob", "metadata": {"name": "embedopt-train"},
        "status": {"conditions": [{"type": "Running", "status": "False"}, {"type": "Succeeded", "status": "True", "message": "done"}]}})
    server.routes[("GET", PODS)] = (200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": []})
    status = _backend(server, tmp_path).status("tfjob", "embedopt-train")
    assert (status.state, status.message, status.finished) == ("Succeeded", "done", True)


def test_delete_removes_what_is_labelled(server, tmp_path):
    listed = lambda kind, names: (200, {"kind": kind, "apiVersion": "v1", "metadata": {}, "items": [{"metadata": {"name": n}} for n in names]})
    server.routes[("GET", JOBS)] = listed("JobList", ["embedopt-train"])
    server.routes[("GET", SERVICES)] = listed("ServiceList", ["embedopt-train"])
    server.routes[("GET", CONFIGMAPS)] = listed("ConfigMapList", ["embedopt-train-trainer-args"])
    for path in (f"{JOBS}/embedopt-train", f"{SERVICES}/embedopt-train", f"{CONFIGMAPS}/embedopt-train-trainer-args"):
        server.routes[("DELETE", path)] = (200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}})
    deleted = _backend(server, tmp_path).delete("embedopt-train")  # no TFJob CRD: 404 on the list is skipped
    assert deleted == ["job/embedopt-train", "service/embedopt-train", "configmap/embedopt-train-trainer-args"]
    job_delete = next(body for m, p, _, body in server.requests if m == "DELETE" and p.startswith(JOBS))
    assert job_delete["propagationPolicy"] == "Background"  # its pods go too


def test_cli_exit_codes_and_messages(server, tmp_path, capsys):
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", server.url)
    server.routes[("POST", JOBS)] = (403, status_body(403, "Forbidden", "forbidden"))
    server.routes[("POST", f"/api/v1/namespaces/{NS}/persistentvolumeclaims")] = (
        409, status_body(409, "AlreadyExists", "exists", "persistentvolumeclaims"))  # kept, not an error
    assert cli.main(["submit", "--kubeconfig", kubeconfig]) == 1
    assert "forbidden by RBAC" in capsys.readouterr().err
    assert cli.main(["submit", "--kind", "job", "--workers", "2", "--kubeconfig", kubeconfig]) == 2
    assert "workers=2" in capsys.readouterr().err


def test_wait_is_bounded(server, tmp_path):
    server.routes[("GET", f"{JOBS}/embedopt-train")] = (200, {"kind": "Job", "apiVersion": "batch/v1",
        "metadata": {"name": "embedopt-train"}, "status": {"active": 1}})
    server.routes[("GET", PODS)] = (200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [_pod("p", 0)]})
    now = [0.0]
    status = cli.wait_for(_backend(server, tmp_path), "job", "embedopt-train", timeout=30, interval=10,
                          clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    assert status.state == "Running" and now[0] == 30
    assert sum(1 for r in server.requests if r[1] == f"{JOBS}/embedopt-train") == 4  # t = 0, 10, 20, 30
