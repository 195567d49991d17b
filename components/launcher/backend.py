"""Where jobs run: a small interface and the real Kubernetes backend.

`Backend` is what the CLI needs: `submit`, `status`, `logs`, `delete`.
`KubernetesBackend` implements it with the official client, loading the
user's kubeconfig (or the in-cluster service account) and explaining every
failure through `components.launcher.errors`. Objects are found again by the
labels the builders set, so `delete` removes exactly what `submit` created
(except a ClusterTrainingRuntime, which may serve other namespaces). The
custom resources (TFJob, Trainer v2's TrainJob and runtimes) go through
`CustomObjectsApi`; a missing CRD is explained, not a stack trace.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import yaml
from kubernetes import client, config as kube_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from components.launcher.builders import TFJOB_CONTAINER
from components.launcher.config import TRAINJOB_REPLICATED_JOB
from components.launcher.errors import LauncherError, explain, explain_config_error, pod_problems, status_details_kind
from components.launcher.pod import selector
from components.launcher.render import to_dict

# custom resource kind -> (group, version, plural, namespaced)
CUSTOM_KINDS = {
    "TFJob": ("kubeflow.org", "v1", "tfjobs", True),
    "TrainJob": ("trainer.kubeflow.org", "v1alpha1", "trainjobs", True),
    "TrainingRuntime": ("trainer.kubeflow.org", "v1alpha1", "trainingruntimes", True),
    "ClusterTrainingRuntime": ("trainer.kubeflow.org", "v1alpha1", "clustertrainingruntimes", False),
}
RUNTIME_KINDS = ("TrainingRuntime", "ClusterTrainingRuntime")
# --kind -> the custom resource `status` reads (other kinds: a batch Job)
WORKLOADS = {"tfjob": "TFJob", "trainjob": "TrainJob"}
# namespaced custom resources `delete` removes, in this order
DELETED_CUSTOM = ("TFJob", "TrainJob", "TrainingRuntime")
# (succeeded, failed) condition types per kind
CONDITIONS = {"tfjob": ("Succeeded", "Failed"), "trainjob": ("Complete", "Failed")}
CONTAINERS = {"tfjob": TFJOB_CONTAINER, "trainjob": TRAINJOB_REPLICATED_JOB}
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
TF_REPLICA_TYPE = "training.kubeflow.org/replica-type"
TF_REPLICA_INDEX = "training.kubeflow.org/replica-index"
FINISHED = ("Succeeded", "Failed")


@dataclass
class WorkerStatus:
    index: int
    pod: str
    phase: str
    restarts: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass
class JobStatus:
    name: str
    kind: str
    state: str  # Pending, Running, Succeeded, Failed, NotFound
    message: str = ""
    workers: list[WorkerStatus] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.state in FINISHED or self.state == "NotFound"

    @property
    def problems(self) -> list[str]:
        return [p for w in self.workers for p in w.problems]


class Backend(Protocol):
    def submit(self, objects: list[Any], dry_run: bool = False) -> list[str]: ...
    def status(self, kind: str, name: str) -> JobStatus: ...
    def logs(self, kind: str, name: str, index: int, follow: bool = False) -> Iterator[str]: ...
    def delete(self, name: str, include_data: bool = False) -> list[str]: ...


def load_api_client(kubeconfig: str | None = None, context: str | None = None) -> client.ApiClient:
    """kubeconfig (file, $KUBECONFIG or ~/.kube/config), else the in-cluster service account."""
    configuration = client.Configuration()
    try:
        if kubeconfig or os.environ.get("KUBECONFIG") or os.path.exists(os.path.expanduser("~/.kube/config")):
            kube_config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
        elif context:
            raise ConfigException(f"context {context!r} given but no kubeconfig file found")
        else:
            kube_config.load_incluster_config(client_configuration=configuration)
    except ConfigException as err:
        raise explain_config_error(err) from err
    except yaml.YAMLError as err:
        raise LauncherError(f"the kubeconfig {kubeconfig or os.environ.get('KUBECONFIG') or '~/.kube/config'} is not "
                            f"valid YAML ({err}); fix it or pass another with --kubeconfig") from None
    # Fail fast on an unreachable server instead of retrying for a minute.
    configuration.retries = 1
    return client.ApiClient(configuration)


def _worker_index(kind: str, pod: client.V1Pod) -> int:
    labels, annotations = pod.metadata.labels or {}, pod.metadata.annotations or {}
    if kind == "tfjob":
        replica_index = int(labels.get(TF_REPLICA_INDEX, 0))
        return replica_index if labels.get(TF_REPLICA_TYPE, "").lower() == "chief" else replica_index + 1
    if kind in ("indexed", "trainjob"):
        return int(annotations.get(INDEX_ANNOTATION, labels.get(INDEX_ANNOTATION, 0)))
    return 0


def _state_from_conditions(conditions: list[Any], succeeded: str, failed: str) -> tuple[str, str] | None:
    for condition in conditions or []:
        ctype, cstatus = _get(condition, "type"), _get(condition, "status")
        if cstatus == "True" and ctype in (succeeded, failed):
            return ("Succeeded" if ctype == succeeded else "Failed"), _get(condition, "message") or ""
    return None


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def _resource(kind: str) -> str:
    """`plural.group`, e.g. trainjobs.trainer.kubeflow.org, as RBAC and error messages name it."""
    group, _, plural, _ = CUSTOM_KINDS[kind]
    return f"{plural}.{group}"


class KubernetesBackend:
    def __init__(self, namespace: str, api_client: client.ApiClient):
        self.namespace = namespace
        self.api = api_client
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    def _call(self, action: str, resource: str, fn: Callable[..., Any], *args, **kwargs) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # explained below, or re-raised unchanged
            explained = explain(err, action, resource, self.namespace, self.api.configuration.host)
            if explained is err:
                raise
            raise explained from err

    def _custom(self, verb: str, kind: str, *args, **kwargs) -> Any:
        """CustomObjectsApi `<verb>_{namespaced,cluster}_custom_object` for a kind of CUSTOM_KINDS."""
        group, version, plural, namespaced = CUSTOM_KINDS[kind]
        scope = (self.namespace,) if namespaced else ()
        method = getattr(self.custom, f"{verb}_{'namespaced' if namespaced else 'cluster'}_custom_object")
        return method(group, version, *scope, plural, *args, **kwargs)

    # -- submit --------------------------------------------------------------

    def _create(self, data: dict[str, Any], dry_run: str | None) -> str:
        kind, name, ns = data["kind"], data["metadata"]["name"], self.namespace
        opts = {"dry_run": dry_run} if dry_run else {}
        creators = {
            "Namespace": ("namespaces", lambda: self.core.create_namespace(data, **opts)),
            "PersistentVolumeClaim": (
                "persistentvolumeclaims",
                lambda: self.core.create_namespaced_persistent_volume_claim(ns, data, **opts),
            ),
            "ConfigMap": ("configmaps", lambda: self.core.create_namespaced_config_map(ns, data, **opts)),
            "Service": ("services", lambda: self.core.create_namespaced_service(ns, data, **opts)),
            "Job": ("jobs.batch", lambda: self.batch.create_namespaced_job(ns, data, **opts)),
        }
        if kind in CUSTOM_KINDS:
            creators[kind] = (_resource(kind), lambda: self._custom("create", kind, data, **opts))
        if kind not in creators:
            raise ValueError(f"cannot submit kind {kind!r}; supported: {', '.join([*creators, *CUSTOM_KINDS])}")
        resource, create = creators[kind]
        try:
            create()
            return f"{kind.lower()}/{name} created"
        except ApiException as err:
            if err.status != 409 or kind in ("Job", "TFJob", "TrainJob"):
                raise explain(err, "create", resource, ns, self.api.configuration.host) from err
        except Exception as err:  # unreachable server and the like: explained, or re-raised unchanged
            explained = explain(err, "create", resource, ns, self.api.configuration.host)
            if explained is err:
                raise
            raise explained from None
        # Shared objects that exist already are kept; the trainer flags are refreshed.
        if kind == "ConfigMap":
            self._call("replace", resource, self.core.replace_namespaced_config_map, name, ns, data, **opts)
            return f"configmap/{name} replaced"
        if kind in RUNTIME_KINDS:
            self._replace_runtime(kind, data, opts)
            return f"{kind.lower()}/{name} replaced"
        return f"{kind.lower()}/{name} unchanged (exists)"

    def _replace_runtime(self, kind: str, data: dict[str, Any], opts: dict[str, Any]) -> None:
        """A runtime holds the pod settings, so a new submit refreshes it (custom objects need resourceVersion)."""
        name, resource = data["metadata"]["name"], _resource(kind)
        current = self._call("get", resource, self._custom, "get", kind, name)
        body = {**data, "metadata": {**data["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]}}
        self._call("replace", resource, self._custom, "replace", kind, name, body, **opts)

    def submit(self, objects: list[Any], dry_run: bool = False) -> list[str]:
        """Create objects in order; with dry_run the server validates and stores nothing."""
        results = []
        for obj in objects:
            data = to_dict(obj)
            results.append(self._create(data, "All" if dry_run else None))
        return [r + (" (server dry run)" if dry_run else "") for r in results]

    # -- status --------------------------------------------------------------

    def _pods(self, name: str) -> list[client.V1Pod]:
        pods = self._call("list", "pods", self.core.list_namespaced_pod, self.namespace, label_selector=selector(name))
        return sorted(pods.items, key=lambda p: p.metadata.creation_timestamp or 0)

    def _read_workload(self, kind: str, name: str) -> Any:
        if kind in WORKLOADS:
            return self._custom("get", WORKLOADS[kind], name)
        return self.batch.read_namespaced_job(name, self.namespace)

    def _workload_state(self, kind: str, name: str) -> tuple[str, str] | None:
        """(state, message), or None when the object does not exist."""
        resource = _resource(WORKLOADS[kind]) if kind in WORKLOADS else "jobs.batch"
        try:
            job = self._call("get", resource, self._read_workload, kind, name)
        except LauncherError as err:
            cause = err.__cause__
            # A Status body naming the resource: the object is missing (not the CRD).
            if isinstance(cause, ApiException) and cause.status == 404 and status_details_kind(cause) in (
                "jobs", "tfjobs", "trainjobs"
            ):
                return None
            raise
        if kind in WORKLOADS:
            done = _state_from_conditions((job.get("status") or {}).get("conditions"), *CONDITIONS[kind])
            return done or ("Running", "")
        done = _state_from_conditions(job.status and job.status.conditions, "Complete", "Failed")
        return done or (("Running", "") if (job.status and job.status.active) else ("Pending", ""))

    def status(self, kind: str, name: str) -> JobStatus:
        state = self._workload_state(kind, name)
        if state is None:
            return JobStatus(name, kind, "NotFound", f"no {kind} named {name!r} in namespace {self.namespace!r}")
        latest: dict[int, client.V1Pod] = {}
        for pod in self._pods(name):
            latest[_worker_index(kind, pod)] = pod  # sorted by age: the newest attempt wins
        workers = [
            WorkerStatus(
                index=i,
                pod=pod.metadata.name,
                phase=(pod.status and pod.status.phase) or "Unknown",
                restarts=sum(s.restart_count or 0 for s in (pod.status and pod.status.container_statuses) or []),
                problems=pod_problems(pod),
            )
            for i, pod in sorted(latest.items())
        ]
        return JobStatus(name, kind, state[0], state[1], workers)

    # -- logs ----------------------------------------------------------------

    def logs(self, kind: str, name: str, index: int, follow: bool = False) -> Iterator[str]:
        pods = [p for p in self._pods(name) if _worker_index(kind, p) == index]
        if not pods:
            raise LauncherError(f"no pod for worker {index} of {kind} {name!r} in namespace {self.namespace!r} (yet)")
        container = CONTAINERS.get(kind, "trainer")
        response = self._call(
            "read logs of", "pods/log", self.core.read_namespaced_pod_log, pods[-1].metadata.name, self.namespace,
            container=container, follow=follow, _preload_content=False,
        )
        try:
            for chunk in response.stream(4096):
                yield chunk.decode("utf-8", errors="replace")
        finally:
            response.release_conn()

    # -- delete --------------------------------------------------------------

    def _list_custom(self, kind: str, label_selector: str) -> list[dict[str, Any]]:
        """Labelled custom objects; none when the CRD is not installed (404)."""
        try:
            return self._custom("list", kind, label_selector=label_selector)["items"]
        except ApiException as err:
            if err.status == 404:
                return []
            raise explain(err, "list", _resource(kind), self.namespace) from err
        except Exception as err:  # unreachable server and the like: explained, or re-raised unchanged
            explained = explain(err, "list", _resource(kind), self.namespace, self.api.configuration.host)
            if explained is err:
                raise
            raise explained from None

    def delete(self, name: str, include_data: bool = False) -> list[str]:
        """Delete everything labelled with this instance; the data PVC only with include_data.

        A ClusterTrainingRuntime is kept: it is cluster-scoped and may serve TrainJobs in other namespaces.
        """
        ns, sel, deleted = self.namespace, selector(name), []
        background = client.V1DeleteOptions(propagation_policy="Background")
        for kind in DELETED_CUSTOM:
            for item in self._list_custom(kind, sel):
                self._call("delete", _resource(kind), self._custom, "delete", kind, item["metadata"]["name"])
                deleted.append(f"{kind.lower()}/{item['metadata']['name']}")
        kinds = [
            ("job", "jobs.batch", self.batch.list_namespaced_job, self.batch.delete_namespaced_job),
            ("service", "services", self.core.list_namespaced_service, self.core.delete_namespaced_service),
            ("configmap", "configmaps", self.core.list_namespaced_config_map, self.core.delete_namespaced_config_map),
        ]
        if include_data:
            kinds.append(("persistentvolumeclaim", "persistentvolumeclaims",
                          self.core.list_namespaced_persistent_volume_claim,
                          self.core.delete_namespaced_persistent_volume_claim))
        for label, resource, list_fn, delete_fn in kinds:
            for item in self._call("list", resource, list_fn, ns, label_selector=sel).items:
                self._call("delete", resource, delete_fn, item.metadata.name, ns, body=background)
                deleted.append(f"{label}/{item.metadata.name}")
        return deleted
