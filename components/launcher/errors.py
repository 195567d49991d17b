"""Turn Kubernetes client failures into messages that say what to do.

`explain(err, ...)` maps the client's own exception types:

- `ConfigException` (no kubeconfig, unknown context, not in a cluster);
- urllib3 connection failures (cluster unreachable);
- `ApiException` 401/403 (credentials, RBAC), 404 on the TFJob resource
  (the Kubeflow training operator's CRD is not installed) or on a Trainer v2
  resource (Kubeflow Trainer v2 is not installed), 404 namespace,
  409 (already exists), 422 (the server rejected the manifest);

`pod_problems(pod)` reads a pod's status for failures that never surface as
API errors: image pull failures, crash loops, pods that cannot be scheduled
(e.g. no node with a free `nvidia.com/gpu`).
"""

from __future__ import annotations

import json

import urllib3
from kubernetes.client import V1Pod
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException


class LauncherError(RuntimeError):
    """A failure explained for the user; the CLI prints it and exits 1."""


_IMAGE_PULL = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
_CONFIG_ERRORS = {"CreateContainerConfigError", "CreateContainerError"}


def _status_message(err: ApiException) -> str:
    try:
        body = json.loads(err.body or "")
    except (TypeError, ValueError):
        return (err.body or err.reason or "").strip() if isinstance(err.body, str) else str(err.reason or "")
    return body.get("message") or err.reason or ""


def status_details_kind(err: ApiException) -> str:
    try:
        return (json.loads(err.body or "").get("details") or {}).get("kind", "")
    except (TypeError, ValueError, AttributeError):
        return ""


def explain_api_exception(err: ApiException, action: str, resource: str, namespace: str | None = None) -> LauncherError:
    """`action` is a verb phrase ("create", "list"), `resource` e.g. "tfjobs.kubeflow.org" or "jobs"."""
    message = _status_message(err)
    what = f"{action} {resource}" + (f" in namespace {namespace!r}" if namespace else "")
    if err.status == 401:
        return LauncherError(
            f"cannot {what}: the cluster rejected the credentials (401 Unauthorized). "
            "Refresh them (e.g. re-run your cloud's `get-credentials` command) and check `kubectl auth whoami`."
        )
    if err.status == 403:
        return LauncherError(
            f"cannot {what}: forbidden by RBAC (403): {message}. Ask a cluster admin for a Role allowing it, "
            f"or check with `kubectl auth can-i {action} {resource}" + (f" -n {namespace}`." if namespace else "`.")
        )
    if err.status == 404:
        if status_details_kind(err) == "namespaces" or "namespaces" in message and "not found" in message:
            return LauncherError(
                f"cannot {what}: namespace {namespace!r} does not exist. "
                f"Create it (`kubectl create namespace {namespace}`) or pass --namespace."
            )
        if resource.endswith("trainer.kubeflow.org") and not status_details_kind(err):
            return LauncherError(
                f"cannot {what}: the {resource} resource is unknown to this cluster (404), so Kubeflow Trainer v2 "
                "is not installed. Install it (kubectl apply --server-side -k "
                "\"https://github.com/kubeflow/trainer.git/manifests/overlays/manager?ref=v2.3.0\") "
                "or use --kind indexed, which needs no operator."
            )
        if resource.endswith("kubeflow.org") and status_details_kind(err) != "tfjobs":
            return LauncherError(
                f"cannot {what}: the TFJob resource is unknown to this cluster (404), so the Kubeflow training "
                "operator's CRD is not installed. Install it (kubectl apply -k "
                "\"github.com/kubeflow/training-operator.git/manifests/overlays/standalone?ref=v1.9.0\") "
                "or use --kind indexed, which needs no operator."
            )
        return LauncherError(f"cannot {what}: not found (404): {message}")
    if err.status == 409:
        return LauncherError(
            f"cannot {what}: it already exists (409): {message}. Delete it first with `embedopt k8s delete` "
            "or choose another --name."
        )
    if err.status == 422:
        return LauncherError(f"cannot {what}: the API server rejected the manifest (422): {message}")
    return LauncherError(f"cannot {what}: API error {err.status} {err.reason}: {message}")


def explain_connection_error(err: Exception, host: str | None) -> LauncherError:
    return LauncherError(
        f"cannot reach the Kubernetes API server at {host or 'the configured address'}: {err}. "
        "Check that the cluster is running and that your kubeconfig context points at it "
        "(`kubectl config current-context`, `kubectl cluster-info`)."
    )


def explain_config_error(err: Exception) -> LauncherError:
    return LauncherError(
        f"no usable Kubernetes configuration: {err}. Point KUBECONFIG (or --kubeconfig) at a kubeconfig file, "
        "pick a context with --context, or run inside a cluster with a service account."
    )


def explain(err: Exception, action: str, resource: str, namespace: str | None = None, host: str | None = None) -> Exception:
    """The LauncherError for a client failure, or `err` itself when it is not one we know."""
    if isinstance(err, ApiException):
        return explain_api_exception(err, action, resource, namespace)
    if isinstance(err, (urllib3.exceptions.MaxRetryError, urllib3.exceptions.NewConnectionError, urllib3.exceptions.ProtocolError, ConnectionError)):
        return explain_connection_error(err, host)
    if isinstance(err, ConfigException):
        return explain_config_error(err)
    return err


def pod_problems(pod: V1Pod) -> list[str]:
    """Human-readable problems visible in a pod's status (empty when none)."""
    problems = []
    name = pod.metadata.name
    statuses = list((pod.status and pod.status.init_container_statuses) or []) + list(
        (pod.status and pod.status.container_statuses) or []
    )
    for status in statuses:
        waiting = status.state and status.state.waiting
        if waiting is None:
            continue
        detail = f" ({waiting.message})" if waiting.message else ""
        if waiting.reason in _IMAGE_PULL:
            problems.append(
                f"pod {name}: cannot pull image {status.image!r}: {waiting.reason}{detail}. Check the image name and "
                "tag, that it was pushed, and that the namespace has an imagePullSecret for a private registry."
            )
        elif waiting.reason == "CrashLoopBackOff":
            problems.append(f"pod {name}: container {status.name} keeps crashing; see `embedopt k8s logs`.")
        elif waiting.reason in _CONFIG_ERRORS:
            problems.append(f"pod {name}: container {status.name} cannot start: {waiting.reason}{detail}.")
    for condition in (pod.status and pod.status.conditions) or []:
        if condition.type == "PodScheduled" and condition.status == "False" and condition.reason == "Unschedulable":
            hint = (
                " No node has a free nvidia.com/gpu: check the NVIDIA device plugin, GPU node taints "
                "(--toleration) and --gpus."
                if "nvidia.com/gpu" in (condition.message or "")
                else ""
            )
            problems.append(f"pod {name}: cannot be scheduled: {condition.message}.{hint}")
    return problems
