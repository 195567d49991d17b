"""The pod template shared by every job kind: a hardened trainer container.

The container runs as the image's fixed non-root user with a read-only root
filesystem, no privilege escalation and no capabilities; `/tmp` (also HOME,
for Keras and CUDA caches) is a writable `emptyDir`, `/dev/shm` is a
memory-backed `emptyDir` because NCCL and tf.data need more than the
runtime's 64 MiB default; both have a `sizeLimit` (`/dev/shm` counts against
the memory limit, so it defaults to a quarter of it), so a runaway cache gets
the pod evicted instead of filling the node. `pod_failure_policy` is the
Job-level rule set the Job-based kinds share: evictions do not count as
failures, a usage error (exit 2) fails at once. Trainer flags come from the `<name>-trainer-args`
ConfigMap, read by the entrypoint (`components.launcher.tf_config`), so they
can be changed without editing the workload.
"""

from __future__ import annotations

from kubernetes import client

from components.launcher.config import RUN_AS_UID, LaunchConfig

GPU_RESOURCE = "nvidia.com/gpu"
TRAINER_ARGS_KEY = "trainer-args"
TRAINER_ARGS_DIR = "/etc/embedopt"
TMP_DIR = "/tmp"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
APP = "embedopt"
TRAINER_CONTAINER = "trainer"
USAGE_ERROR_EXIT_CODE = 2  # argparse: retrying a bad flag cannot help


def labels(config: LaunchConfig, component: str | None = None) -> dict[str, str]:
    """Labels on every object; `delete` and `status` select on name + instance."""
    out = {LABEL_NAME: APP, LABEL_INSTANCE: config.name, LABEL_MANAGED_BY: APP}
    if component:
        out[LABEL_COMPONENT] = component
    return out


def selector(name: str) -> str:
    return f"{LABEL_NAME}={APP},{LABEL_INSTANCE}={name}"


def trainer_args_config_map_name(config: LaunchConfig) -> str:
    return f"{config.name}-trainer-args"


def entrypoint_args() -> list[str]:
    return ["k8s", "entrypoint", "--args-file", f"{TRAINER_ARGS_DIR}/{TRAINER_ARGS_KEY}", "--", "train"]


def resource_requirements(config: LaunchConfig) -> client.V1ResourceRequirements:
    r = config.resources
    requests = {"cpu": r.cpu_request, "memory": r.memory_request}
    limits = {"cpu": r.cpu_limit, "memory": r.memory_limit}
    if r.gpus:
        # Extended resources cannot be overcommitted: request == limit.
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(r.gpus)
    return client.V1ResourceRequirements(requests=requests, limits=limits)


def container(
    config: LaunchConfig,
    name: str = TRAINER_CONTAINER,
    env: dict[str, str] | None = None,
    ports: list[client.V1ContainerPort] | None = None,
    env_from_fields: dict[str, str] | None = None,
) -> client.V1Container:
    """The trainer container; `env_from_fields` maps variable names to Downward API field paths."""
    base_env = {"HOME": TMP_DIR, "PYTHONUNBUFFERED": "1"}
    base_env.update(env or {})
    field_env = [
        client.V1EnvVar(name=k, value_from=client.V1EnvVarSource(field_ref=client.V1ObjectFieldSelector(field_path=path)))
        for k, path in (env_from_fields or {}).items()
    ]
    return client.V1Container(
        name=name,
        image=config.image,
        image_pull_policy=config.image_pull_policy,
        args=entrypoint_args(),
        env=[client.V1EnvVar(name=k, value=v) for k, v in base_env.items()] + field_env,
        ports=ports,
        resources=resource_requirements(config),
        security_context=client.V1SecurityContext(
            run_as_non_root=True,
            run_as_user=RUN_AS_UID,
            run_as_group=RUN_AS_UID,
            read_only_root_filesystem=True,
            allow_privilege_escalation=False,
            privileged=False,
            capabilities=client.V1Capabilities(drop=["ALL"]),
        ),
        volume_mounts=[
            client.V1VolumeMount(name="data", mount_path=config.volume.mount_path),
            client.V1VolumeMount(name="trainer-args", mount_path=TRAINER_ARGS_DIR, read_only=True),
            client.V1VolumeMount(name="tmp", mount_path=TMP_DIR),
            client.V1VolumeMount(name="dshm", mount_path="/dev/shm"),
        ],
    )


def volumes(config: LaunchConfig) -> list[client.V1Volume]:
    v = config.volume
    if v.claim_name is not None:
        data = client.V1Volume(
            name="data", persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(claim_name=v.claim_name)
        )
    else:
        data = client.V1Volume(
            name="data", host_path=client.V1HostPathVolumeSource(path=v.host_path, type="DirectoryOrCreate")
        )
    return [
        data,
        client.V1Volume(
            name="trainer-args",
            config_map=client.V1ConfigMapVolumeSource(name=trainer_args_config_map_name(config)),
        ),
        client.V1Volume(name="tmp", empty_dir=client.V1EmptyDirVolumeSource(size_limit=config.tmp_size_limit)),
        client.V1Volume(name="dshm", empty_dir=client.V1EmptyDirVolumeSource(medium="Memory", size_limit=config.shm_size)),
    ]


def pod_failure_policy(container_name: str = TRAINER_CONTAINER) -> client.V1PodFailurePolicy:
    """Evictions and preemptions (DisruptionTarget) are not failures; a usage error fails the Job at once."""
    return client.V1PodFailurePolicy(rules=[
        client.V1PodFailurePolicyRule(
            action="Ignore",
            on_pod_conditions=[client.V1PodFailurePolicyOnPodConditionsPattern(type="DisruptionTarget", status="True")],
        ),
        client.V1PodFailurePolicyRule(
            action="FailJob",
            on_exit_codes=client.V1PodFailurePolicyOnExitCodesRequirement(
                container_name=container_name, operator="In", values=[USAGE_ERROR_EXIT_CODE]
            ),
        ),
    ])


def pod_template(
    config: LaunchConfig,
    component: str,
    trainer: client.V1Container,
    restart_policy: str,
    subdomain: str | None = None,
) -> client.V1PodTemplateSpec:
    tolerations = [
        client.V1Toleration(key=t.key, operator=t.operator, value=t.value, effect=t.effect) for t in config.tolerations
    ]
    return client.V1PodTemplateSpec(
        metadata=client.V1ObjectMeta(labels=labels(config, component)),
        spec=client.V1PodSpec(
            containers=[trainer],
            restart_policy=restart_policy,
            subdomain=subdomain,
            service_account_name=config.service_account,
            # The trainer never calls the API server; do not hand it a token.
            automount_service_account_token=False,
            node_selector=dict(config.node_selector) or None,
            tolerations=tolerations or None,
            security_context=client.V1PodSecurityContext(
                run_as_non_root=True,
                run_as_user=RUN_AS_UID,
                run_as_group=RUN_AS_UID,
                fs_group=RUN_AS_UID,
                seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
            ),
            volumes=volumes(config),
        ),
    )
