"""Pure builders: `LaunchConfig` -> typed `kubernetes.client` objects.

`build_objects(kind, config)` is what `render`, `submit` and `k8s/` use:

- kind "job": one pod, `nvidia.com/gpu` per the config (1 by default);
- kind "indexed": a Job with `completionMode: Indexed`,
  `completions == parallelism == workers`, plus a headless Service named
  like the Job; pods get hostname `<job>-<index>` and `subdomain=<service>`,
  so `<job>-<index>.<service>` resolves, which the entrypoint puts into
  TF_CONFIG. `backoffLimitPerIndex` restarts a failed worker alone (it
  resumes from the latest checkpoint), evictions and preemptions do not
  count as failures, and usage errors (exit code 2) fail the whole job;
- kind "tfjob": a Kubeflow TFJob (kubeflow.org/v1) with one Chief and
  `workers - 1` Workers. There is no typed model for it, so it is a dict
  whose pod templates are typed models (serialization handles both);
- kind "trainjob": a Kubeflow Trainer v2 TrainJob plus the TensorFlow
  TrainingRuntime (or ClusterTrainingRuntime) it references, built in
  `trainjob`.

`--active-deadline` becomes `activeDeadlineSeconds` in every kind.

The trainer-args ConfigMap goes with every kind; the Namespace and the data
PersistentVolumeClaim are shared objects (`shared_objects`).
"""

from __future__ import annotations

from typing import Any

from kubernetes import client

from components.launcher.config import LaunchConfig, check_kind
from components.launcher.pod import (
    container,
    labels,
    pod_failure_policy,
    pod_template,
    trainer_args_config_map_name,
    TRAINER_ARGS_KEY,
)
from components.launcher.tf_config import ENV_JOB, ENV_PORT, ENV_SERVICE, ENV_WORKERS
from components.launcher.trainjob import build_trainjob, build_training_runtime

TFJOB_API_VERSION = "kubeflow.org/v1"
TFJOB_CONTAINER = "tensorflow"  # the name the training operator looks for
TFJOB_PORT_NAME = "tfjob-port"


def _metadata(config: LaunchConfig, name: str | None = None, component: str | None = None) -> client.V1ObjectMeta:
    return client.V1ObjectMeta(name=name or config.name, namespace=config.namespace, labels=labels(config, component))


def build_namespace(config: LaunchConfig) -> client.V1Namespace:
    return client.V1Namespace(
        api_version="v1", kind="Namespace", metadata=client.V1ObjectMeta(name=config.namespace, labels=labels(config))
    )


def build_data_claim(config: LaunchConfig) -> client.V1PersistentVolumeClaim | None:
    """The data/model PVC, or None when the config uses a hostPath."""
    v = config.volume
    if v.claim_name is None:
        return None
    return client.V1PersistentVolumeClaim(
        api_version="v1",
        kind="PersistentVolumeClaim",
        metadata=_metadata(config, v.claim_name, "data"),
        spec=client.V1PersistentVolumeClaimSpec(
            access_modes=[v.access_mode],
            storage_class_name=v.storage_class,
            resources=client.V1VolumeResourceRequirements(requests={"storage": v.size}),
        ),
    )


def build_trainer_args_config_map(config: LaunchConfig) -> client.V1ConfigMap:
    return client.V1ConfigMap(
        api_version="v1",
        kind="ConfigMap",
        metadata=_metadata(config, trainer_args_config_map_name(config), "config"),
        data={TRAINER_ARGS_KEY: "".join(f"{arg}\n" for arg in config.trainer_args)},
    )


def build_single_gpu_job(config: LaunchConfig) -> client.V1Job:
    check_kind("job", config)
    return client.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=_metadata(config, component="trainer"),
        spec=client.V1JobSpec(
            completions=1,
            parallelism=1,
            backoff_limit=config.backoff_limit_per_index,
            active_deadline_seconds=config.active_deadline_seconds,
            pod_failure_policy=pod_failure_policy(),
            template=pod_template(config, "trainer", container(config), restart_policy="Never"),
        ),
    )


def build_headless_service(config: LaunchConfig) -> client.V1Service:
    return client.V1Service(
        api_version="v1",
        kind="Service",
        metadata=_metadata(config, component="worker"),
        spec=client.V1ServiceSpec(
            cluster_ip="None",
            # Workers must resolve each other while they start, before any is Ready.
            publish_not_ready_addresses=True,
            selector=labels(config, "worker"),
            ports=[client.V1ServicePort(name="grpc", port=config.port, target_port=config.port, protocol="TCP")],
        ),
    )


def build_indexed_job(config: LaunchConfig) -> client.V1Job:
    check_kind("indexed", config)
    env = {
        ENV_JOB: config.name,
        ENV_SERVICE: config.name,
        ENV_WORKERS: str(config.workers),
        ENV_PORT: str(config.port),
    }
    trainer = container(
        config, env=env, ports=[client.V1ContainerPort(name="grpc", container_port=config.port, protocol="TCP")]
    )
    return client.V1Job(
        api_version="batch/v1",
        kind="Job",
        metadata=_metadata(config, component="worker"),
        spec=client.V1JobSpec(
            completion_mode="Indexed",
            completions=config.workers,
            parallelism=config.workers,
            backoff_limit_per_index=config.backoff_limit_per_index,
            active_deadline_seconds=config.active_deadline_seconds,
            pod_failure_policy=pod_failure_policy(),
            template=pod_template(config, "worker", trainer, restart_policy="Never", subdomain=config.name),
        ),
    )


def _tf_replica(config: LaunchConfig, replica_type: str, replicas: int) -> dict[str, Any]:
    trainer = container(
        config,
        name=TFJOB_CONTAINER,
        ports=[client.V1ContainerPort(name=TFJOB_PORT_NAME, container_port=config.port, protocol="TCP")],
    )
    return {
        "replicas": replicas,
        "restartPolicy": "OnFailure",
        "template": pod_template(config, replica_type.lower(), trainer, restart_policy="OnFailure"),
    }


def build_tfjob(config: LaunchConfig) -> dict[str, Any]:
    """A TFJob with one Chief (it trains too, as worker 0 of the cluster) and `workers - 1` Workers."""
    check_kind("tfjob", config)
    replicas = {"Chief": _tf_replica(config, "Chief", 1)}
    if config.workers > 1:
        replicas["Worker"] = _tf_replica(config, "Worker", config.workers - 1)
    run_policy: dict[str, Any] = {"cleanPodPolicy": "Running", "backoffLimit": config.backoff_limit_per_index}
    if config.active_deadline_seconds is not None:
        run_policy["activeDeadlineSeconds"] = config.active_deadline_seconds
    return {
        "apiVersion": TFJOB_API_VERSION,
        "kind": "TFJob",
        "metadata": _metadata(config, component="trainer"),
        "spec": {"runPolicy": run_policy, "tfReplicaSpecs": replicas},
    }


def shared_objects(config: LaunchConfig) -> list[Any]:
    """Objects every kind relies on and that outlive a job: the Namespace and the data PVC."""
    claim = build_data_claim(config)
    return [build_namespace(config)] + ([claim] if claim is not None else [])


def build_objects(kind: str, config: LaunchConfig) -> list[Any]:
    """The per-job objects for `kind`, in creation order (ConfigMap and Service before the workload)."""
    check_kind(kind, config)
    objects: list[Any] = [build_trainer_args_config_map(config)]
    if kind == "job":
        objects.append(build_single_gpu_job(config))
    elif kind == "indexed":
        objects += [build_headless_service(config), build_indexed_job(config)]
    elif kind == "tfjob":
        objects.append(build_tfjob(config))
    else:
        objects += [build_training_runtime(config), build_trainjob(config)]
    return objects
