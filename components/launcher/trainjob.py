"""Kubeflow Trainer v2: a TensorFlow training runtime and the TrainJob that uses it.

Trainer v2 (trainer.kubeflow.org/v1alpha1) runs a TrainJob as a JobSet
(jobset.x-k8s.io/v1alpha2) built from a TrainingRuntime (namespaced) or a
ClusterTrainingRuntime. It ships runtimes for torch, DeepSpeed, JAX, MLX and
XGBoost and none for TensorFlow, so `build_training_runtime` writes one:

- `mlPolicy` has `numNodes` and no framework policy, which selects
  Trainer's PlainML plugin: it only copies the TrainJob's
  `trainer.numNodes` onto the trainer Job's `parallelism`/`completions`
  and merges `trainer.env` into the container named `node`
  (pkg/runtime/framework/plugins/plainml/plainml.go, v2.3.0);
- one replicatedJob `node` labelled
  `trainer.kubeflow.org/trainjob-ancestor-step: trainer`, whose container
  is also named `node` (Trainer overrides image, command, args and env
  only in a container of that name);
- the pod is the hardened pod of the other kinds (`pod.pod_template`);
  Downward API variables carry what JobSet annotates each pod with, and
  `embedopt k8s entrypoint` derives TF_CONFIG from them (see `tf_config`);
- the Job has `backoffLimit: 0` and the JobSet `failurePolicy.maxRestarts`
  = the config's backoff limit: a failed worker restarts the whole JobSet,
  so every worker rejoins the collective and resumes from the checkpoint.
  A usage error (exit 2) fails the Job by pod failure policy, and the
  JobSet rule `onJobFailureReasons: [PodFailurePolicy]` fails the JobSet
  instead of restarting it.

`build_trainjob` references that runtime and sets `trainer.numNodes` and
`EMBEDOPT_WORKERS` from the same `workers`, so the two cannot disagree. The
runtime is named `<name>-tensorflow`; it reads the ConfigMap
`<name>-trainer-args` and the data PVC from the TrainJob's namespace, so a
ClusterTrainingRuntime serves a TrainJob of that name in any namespace.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client

from components.launcher.config import TRAINJOB_REPLICATED_JOB, LaunchConfig, check_kind
from components.launcher.pod import container, labels, pod_failure_policy, pod_template
from components.launcher.tf_config import ENV_PORT, ENV_WORKERS, JOBSET_FIELDS

TRAINER_API_GROUP = "trainer.kubeflow.org"
TRAINER_API_VERSION = f"{TRAINER_API_GROUP}/v1alpha1"
ANCESTOR_LABEL = f"{TRAINER_API_GROUP}/trainjob-ancestor-step"
FRAMEWORK_LABEL = f"{TRAINER_API_GROUP}/framework"
USAGE_ERROR_RULE = "FailOnUsageError"


def runtime_kind(config: LaunchConfig) -> str:
    return "ClusterTrainingRuntime" if config.cluster_runtime else "TrainingRuntime"


def runtime_name(config: LaunchConfig) -> str:
    return f"{config.name}-tensorflow"


def _metadata(config: LaunchConfig, name: str, component: str, namespaced: bool = True, extra: dict | None = None):
    return client.V1ObjectMeta(
        name=name,
        namespace=config.namespace if namespaced else None,
        labels={**labels(config, component), **(extra or {})},
    )


def _node_job(config: LaunchConfig) -> dict[str, Any]:
    trainer = container(
        config,
        name=TRAINJOB_REPLICATED_JOB,
        env={ENV_WORKERS: str(config.workers), ENV_PORT: str(config.port)},
        ports=[client.V1ContainerPort(name="grpc", container_port=config.port, protocol="TCP")],
        env_from_fields=JOBSET_FIELDS,
    )
    return {
        "name": TRAINJOB_REPLICATED_JOB,
        "replicas": 1,
        "template": {
            "metadata": {"labels": {ANCESTOR_LABEL: "trainer"}},
            "spec": client.V1JobSpec(
                completion_mode="Indexed",
                # Trainer overwrites both from the TrainJob's numNodes; set so the runtime reads whole.
                completions=config.workers,
                parallelism=config.workers,
                backoff_limit=0,
                pod_failure_policy=pod_failure_policy(TRAINJOB_REPLICATED_JOB),
                template=pod_template(config, "worker", trainer, restart_policy="Never"),
            ),
        },
    }


def jobset_spec(config: LaunchConfig) -> dict[str, Any]:
    """The JobSet spec the runtime's template holds (validated against the JobSet CRD on its own)."""
    return {
        "network": {"enableDNSHostnames": True, "publishNotReadyAddresses": True},
        "failurePolicy": {
            "maxRestarts": config.backoff_limit_per_index,
            "rules": [{"name": USAGE_ERROR_RULE, "action": "FailJobSet", "onJobFailureReasons": ["PodFailurePolicy"]}],
        },
        "replicatedJobs": [_node_job(config)],
    }


def build_training_runtime(config: LaunchConfig) -> dict[str, Any]:
    """A TrainingRuntime, or with `config.cluster_runtime` a ClusterTrainingRuntime, running our trainer."""
    check_kind("trainjob", config)
    return {
        "apiVersion": TRAINER_API_VERSION,
        "kind": runtime_kind(config),
        "metadata": _metadata(config, runtime_name(config), "runtime", namespaced=not config.cluster_runtime,
                              extra={FRAMEWORK_LABEL: "tensorflow"}),
        "spec": {"mlPolicy": {"numNodes": config.workers}, "template": {"spec": jobset_spec(config)}},
    }


def build_trainjob(config: LaunchConfig) -> dict[str, Any]:
    check_kind("trainjob", config)
    spec: dict[str, Any] = {
        "runtimeRef": {"apiGroup": TRAINER_API_GROUP, "kind": runtime_kind(config), "name": runtime_name(config)},
        "trainer": {
            "numNodes": config.workers,
            "env": [client.V1EnvVar(name=ENV_WORKERS, value=str(config.workers))],
        },
    }
    if config.active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = config.active_deadline_seconds
    return {
        "apiVersion": TRAINER_API_VERSION,
        "kind": "TrainJob",
        "metadata": _metadata(config, config.name, "trainer"),
        "spec": spec,
    }
