"""Launch configuration: dataclasses validated on construction.

Every check raises `ValueError` naming the field, the bad value and what
would be valid, so a typo on the command line fails before anything is sent
to a cluster. Quantities follow Kubernetes syntax ("500m", "16Gi").
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from components.launcher.quantity import BYTES, CPU, check_quantity

KINDS = ("job", "indexed", "tfjob", "trainjob")
MULTI_WORKER_KINDS = ("indexed", "tfjob", "trainjob")
DEFAULT_IMAGE = "embedopt:0.1.0"
DEFAULT_NAME = "embedopt-train"
DEFAULT_NAMESPACE = "embedopt"
# The image's fixed non-root user (see Dockerfile).
RUN_AS_UID = 1000
DEFAULT_PORT = 2222
# Indexed Job pods are named "<job>-<index>" and a hostname is a DNS label
# (63 characters), so the job name leaves room for the index suffix.
MAX_NAME_LENGTH = 52
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# A TrainJob's name must be an RFC 1035 label (CEL rule in the Trainer v2.3.0 TrainJob CRD), and JobSet v0.12.0's
# webhook refuses a JobSet whose longest pod name, "<name>-<replicatedJob>-<jobIndex>-<podIndex>-abcde",
# is not one (pkg/webhooks/jobset_webhook.go, ValidateCreate).
_RFC1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
TRAINJOB_REPLICATED_JOB = "node"  # the replicatedJob (and container) name Trainer v2 fills in (constants.Node)
_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
_ACCESS_MODES = ("ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod")
_PULL_POLICIES = ("Always", "IfNotPresent", "Never")

# `embedopt train` flags: data from `embedopt preprocess --output /data/prepared`,
# SavedModel and checkpoints under /data/models (a restarted worker resumes).
DEFAULT_TRAINER_ARGS = (
    "--data", "/data/prepared",
    "--output", "/data/models",
    "--train-steps", "10000",
    "--no-progress",
)


def _check_dns_label(field_name: str, value: str, max_length: int = 63) -> None:
    if not isinstance(value, str) or not _DNS_LABEL.match(value) or len(value) > max_length:
        raise ValueError(
            f"{field_name}={value!r} must be a DNS label: lower-case letters, digits and '-', "
            f"starting and ending with a letter or digit, at most {max_length} characters"
        )


def _quantity(field_name: str, value: str):
    return check_quantity(field_name, value, CPU if field_name.startswith("cpu") else BYTES)


@dataclass(frozen=True)
class Resources:
    """Per-worker compute. GPUs are whole devices (`nvidia.com/gpu`)."""

    cpu_request: str = "4"
    cpu_limit: str = "8"
    memory_request: str = "16Gi"
    memory_limit: str = "32Gi"
    gpus: int = 1

    def __post_init__(self) -> None:
        for kind in ("cpu", "memory"):
            request = _quantity(f"{kind}_request", getattr(self, f"{kind}_request"))
            limit = _quantity(f"{kind}_limit", getattr(self, f"{kind}_limit"))
            if request > limit:
                raise ValueError(
                    f"{kind}_request={getattr(self, f'{kind}_request')!r} exceeds "
                    f"{kind}_limit={getattr(self, f'{kind}_limit')!r}; a request must not exceed its limit"
                )
        if isinstance(self.gpus, bool) or not isinstance(self.gpus, int) or not 0 <= self.gpus <= 16:
            raise ValueError(f"gpus={self.gpus!r} must be an integer from 0 (CPU only) to 16")


@dataclass(frozen=True)
class DataVolume:
    """The volume holding input data and model output, mounted in every worker.

    Exactly one of `claim_name` (a PersistentVolumeClaim, rendered with
    `size`/`access_mode`/`storage_class`) or `host_path` (a node directory,
    for single-node local clusters such as kind or minikube).
    Multi-worker jobs spread over nodes need `ReadWriteMany`.
    """

    claim_name: str | None = "embedopt-data"
    host_path: str | None = None
    mount_path: str = "/data"
    size: str = "50Gi"
    access_mode: str = "ReadWriteMany"
    storage_class: str | None = None

    def __post_init__(self) -> None:
        if (self.claim_name is None) == (self.host_path is None):
            raise ValueError(
                f"claim_name={self.claim_name!r}, host_path={self.host_path!r}: give exactly one "
                "(a PersistentVolumeClaim name, or a node directory for local clusters)"
            )
        if self.claim_name is not None:
            _check_dns_label("claim_name", self.claim_name, 253)
        if self.host_path is not None and not self.host_path.startswith("/"):
            raise ValueError(f"host_path={self.host_path!r} must be an absolute path on the node")
        if not self.mount_path.startswith("/") or self.mount_path in ("/", "/tmp"):
            raise ValueError(f"mount_path={self.mount_path!r} must be an absolute path other than / and /tmp")
        _quantity("size", self.size)
        if self.access_mode not in _ACCESS_MODES:
            raise ValueError(f"access_mode={self.access_mode!r} must be one of {', '.join(_ACCESS_MODES)}")


@dataclass(frozen=True)
class Toleration:
    """A pod toleration; the default matches the usual GPU node taint."""

    key: str = "nvidia.com/gpu"
    operator: str = "Exists"
    value: str | None = None
    effect: str | None = "NoSchedule"

    def __post_init__(self) -> None:
        if not self.key:
            raise ValueError("toleration key must not be empty")
        if self.operator not in ("Exists", "Equal"):
            raise ValueError(f"toleration operator={self.operator!r} must be 'Exists' or 'Equal'")
        if (self.operator == "Exists") != (self.value is None):
            raise ValueError(f"toleration {self.key!r}: operator 'Equal' needs a value, 'Exists' takes none")
        if self.effect is not None and self.effect not in _EFFECTS:
            raise ValueError(f"toleration effect={self.effect!r} must be one of {', '.join(_EFFECTS)}")


@dataclass(frozen=True)
class LaunchConfig:
    """Everything the builders need. `trainer_args` are passed to `embedopt train` untouched."""

    name: str = DEFAULT_NAME
    image: str = DEFAULT_IMAGE
    namespace: str = DEFAULT_NAMESPACE
    workers: int = 1
    resources: Resources = field(default_factory=Resources)
    volume: DataVolume = field(default_factory=DataVolume)
    trainer_args: tuple[str, ...] = DEFAULT_TRAINER_ARGS
    service_account: str | None = None
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = (Toleration(),)
    port: int = DEFAULT_PORT
    backoff_limit_per_index: int = 3
    image_pull_policy: str = "IfNotPresent"
    active_deadline_seconds: int | None = None
    tmp_size_limit: str = "10Gi"
    shm_size_limit: str | None = None  # None: a quarter of the memory limit
    cluster_runtime: bool = False

    def __post_init__(self) -> None:
        _check_dns_label("name", self.name, MAX_NAME_LENGTH)
        _check_dns_label("namespace", self.namespace)
        if not self.image or any(c.isspace() for c in self.image):
            raise ValueError(f"image={self.image!r} must be a non-empty image reference without spaces")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or not 1 <= self.workers <= 1024:
            raise ValueError(f"workers={self.workers!r} must be an integer from 1 to 1024")
        object.__setattr__(self, "trainer_args", tuple(self.trainer_args))
        object.__setattr__(self, "tolerations", tuple(self.tolerations))
        for arg in self.trainer_args:
            if not isinstance(arg, str) or "\n" in arg or "\r" in arg:
                raise ValueError(f"trainer_args item {arg!r} must be a string without newlines")
            # The ConfigMap holds one argument per line and the pod skips blank and '#' lines (comments for
            # hand edits), so such an argument would vanish inside the pod.
            if not arg.strip() or arg.lstrip().startswith("#"):
                raise ValueError(
                    f"trainer_args item {arg!r} cannot be passed: the trainer-args ConfigMap holds one argument per "
                    "line and skips blank lines and lines starting with '#'; use --flag=value, e.g. --name=x, "
                    "or a value without a leading '#'")
        if self.service_account is not None:
            _check_dns_label("service_account", self.service_account, 253)
        for key, value in self.node_selector.items():
            if not key or not isinstance(value, str):
                raise ValueError(f"node_selector {key!r}={value!r} must map a label key to a string")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 1024 <= self.port <= 65535:
            raise ValueError(f"port={self.port!r} must be an unprivileged port from 1024 to 65535")
        if not isinstance(self.backoff_limit_per_index, int) or not 0 <= self.backoff_limit_per_index <= 100:
            raise ValueError(f"backoff_limit_per_index={self.backoff_limit_per_index!r} must be from 0 to 100")
        if self.image_pull_policy not in _PULL_POLICIES:
            raise ValueError(f"image_pull_policy={self.image_pull_policy!r} must be one of {', '.join(_PULL_POLICIES)}")
        deadline = self.active_deadline_seconds
        if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, int) or deadline < 1):
            raise ValueError(f"active_deadline_seconds={deadline!r} must be a positive integer (seconds) or None for no limit")
        _quantity("tmp_size_limit", self.tmp_size_limit)
        # A memory-backed emptyDir is charged to the container's memory limit.
        if self.shm_size_limit is not None and (
            _quantity("shm_size_limit", self.shm_size_limit) > _quantity("memory_limit", self.resources.memory_limit)
        ):
            raise ValueError(
                f"shm_size_limit={self.shm_size_limit!r} exceeds memory_limit={self.resources.memory_limit!r}; "
                "/dev/shm is memory-backed and counts against the memory limit"
            )

    @property
    def shm_size(self) -> str:
        """The /dev/shm sizeLimit: as given, else a quarter of the memory limit (in Mi, or Gi when whole).

        A memory limit under 4Mi gives whole bytes instead, so the limit is never rendered as "0Mi".
        """
        if self.shm_size_limit is not None:
            return self.shm_size_limit
        quarter = int(_quantity("memory_limit", self.resources.memory_limit) / 4)
        mebibytes = quarter // 2**20
        if mebibytes == 0:
            return str(max(quarter, 1))
        return f"{mebibytes // 1024}Gi" if mebibytes % 1024 == 0 else f"{mebibytes}Mi"

    def replace(self, **changes) -> "LaunchConfig":
        return dataclasses.replace(self, **changes)


def check_kind(kind: str, config: LaunchConfig) -> None:
    """Raise ValueError when `config` does not fit the job `kind`."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} must be one of {', '.join(KINDS)}")
    if kind == "job" and config.workers != 1:
        raise ValueError(f"workers={config.workers} but kind 'job' runs one worker; use --kind "
                         f"{', '.join(MULTI_WORKER_KINDS[:-1])} or {MULTI_WORKER_KINDS[-1]}")
    if config.cluster_runtime and kind != "trainjob":
        raise ValueError(f"cluster_runtime=True applies to kind 'trainjob' only, not {kind!r}")
    if kind == "trainjob":
        longest_pod = f"{config.name}-{TRAINJOB_REPLICATED_JOB}-0-{config.workers - 1}-abcde"
        if not _RFC1035_LABEL.match(config.name):
            raise ValueError(f"name={config.name!r} must start with a letter for kind 'trainjob' (an RFC 1035 label)")
        if len(longest_pod) > 63:
            raise ValueError(
                f"name={config.name!r} is too long for kind 'trainjob' with {config.workers} workers: JobSet names "
                f"pods like {longest_pod!r} ({len(longest_pod)} characters, at most 63); "
                f"use a name of at most {len(config.name) - (len(longest_pod) - 63)} characters"
            )
