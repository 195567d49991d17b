"""`embedopt k8s`: render, submit and watch training jobs on Kubernetes.

    embedopt k8s render --kind indexed --workers 4 [--output DIR] [-- TRAINER_FLAGS]
    embedopt k8s submit --kind trainjob --image REG/embedopt:0.1.0 [--dry-run server] [--wait] [-- TRAINER_FLAGS]
    embedopt k8s status --kind indexed [--wait --timeout 3600]
    embedopt k8s logs --kind indexed --index 1 [--follow]
    embedopt k8s delete [--include-data]
    embedopt k8s kustomize --output k8s
    embedopt k8s entrypoint -- train ...      (inside the container)

Arguments after `--` replace the default trainer flags (they go into the
trainer-args ConfigMap). Every option's help shows its default
(`help_format`). `entrypoint` is dispatched before anything imports the
kubernetes client, so the image needs no extras.
"""

from __future__ import annotations

import argparse
import sys
import time

from components.launcher import tf_config
from components.launcher.help_format import HelpFormatter, PassthroughHelpFormatter, trainer_flags_epilog
from components.launcher.quantity import BYTES, CPU, gpu_count, quantity_flag

PROG = "embedopt k8s"
def _split_trainer_args(argv: list[str]) -> tuple[list[str], list[str] | None]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, None


def _add_target(parser: argparse.ArgumentParser, kind: bool = True) -> None:
    from components.launcher.config import DEFAULT_NAME, DEFAULT_NAMESPACE, KINDS

    if kind:
        parser.add_argument(
            "--kind", choices=KINDS, default="job",
            help="job: one pod (one GPU); indexed: multi-worker Indexed Job + headless Service, no operator; "
            "tfjob: Kubeflow TFJob (training operator v1); trainjob: Kubeflow Trainer v2 TrainJob + TensorFlow runtime",
        )
    parser.add_argument("--name", default=DEFAULT_NAME, help="job name; also names its Service, ConfigMap and runtime")
    parser.add_argument("--namespace", "-n", default=DEFAULT_NAMESPACE, help="namespace of the job and its objects")


def _add_cluster(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, then in-cluster)")
    parser.add_argument("--context", help="kubeconfig context to use (default: the kubeconfig's current context)")


def _add_wait(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wait", action="store_true", help="poll until the job finishes or fails")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait at most")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between polls")


def _add_config(parser: argparse.ArgumentParser) -> None:
    from components.launcher.config import DEFAULT_IMAGE, DEFAULT_PORT

    parser.add_argument("--image", default=DEFAULT_IMAGE, help="trainer image, e.g. REGISTRY/embedopt:0.1.0")
    parser.add_argument("--image-pull-policy", default="IfNotPresent", choices=("Always", "IfNotPresent", "Never"),
                        help="when the kubelet pulls the image")
    parser.add_argument("--workers", type=int, help="number of workers (default: 1 for job, 2 otherwise)")
    parser.add_argument("--gpus", type=gpu_count, default=1, help="GPUs (nvidia.com/gpu) per worker; 0 = CPU only")
    parser.add_argument("--cpu-request", type=quantity_flag("--cpu-request", CPU), default="4", help="CPU request per worker")
    parser.add_argument("--cpu-limit", type=quantity_flag("--cpu-limit", CPU), default="8", help="CPU limit per worker")
    parser.add_argument("--memory-request", type=quantity_flag("--memory-request", BYTES), default="16Gi", help="memory request per worker")
    parser.add_argument("--memory-limit", type=quantity_flag("--memory-limit", BYTES), default="32Gi",
                        help="memory limit per worker; see docs/kubernetes.md for what a table needs per optimizer")
    parser.add_argument("--tmp-size", type=quantity_flag("--tmp-size", BYTES), default="10Gi", help="sizeLimit of the /tmp emptyDir (HOME, caches)")
    parser.add_argument("--shm-size", type=quantity_flag("--shm-size", BYTES), help="sizeLimit of the memory-backed /dev/shm emptyDir; it counts against "
                        "--memory-limit (default: a quarter of --memory-limit)")
    parser.add_argument("--active-deadline", type=int, metavar="SECONDS",
                        help="activeDeadlineSeconds: stop the job after this long (default: no limit)")
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--data-claim", default=None, help="PersistentVolumeClaim for data and models (default: embedopt-data)")
    data.add_argument("--data-host-path", help="node directory instead of a PVC, for single-node local clusters")
    parser.add_argument("--data-size", type=quantity_flag("--data-size", BYTES), default="50Gi", help="size of the data PVC")
    parser.add_argument("--data-access-mode", default="ReadWriteMany",
                        help="access mode of the data PVC; workers on several nodes need ReadWriteMany")
    parser.add_argument("--storage-class", help="storage class of the data PVC (default: the cluster's default class)")
    parser.add_argument("--mount-path", default="/data", help="where the data volume is mounted in the container")
    parser.add_argument("--service-account", help="pod service account (default: the namespace's default)")
    parser.add_argument("--node-selector", action="append", default=[], metavar="KEY=VALUE",
                        help="node label the pods must match, e.g. cloud.google.com/gke-accelerator=nvidia-l4; repeatable")
    parser.add_argument(
        "--toleration", action="append", default=None, metavar="KEY[=VALUE][:EFFECT]",
        help="replaces the default toleration of the nvidia.com/gpu taint; repeatable "
        "(default: nvidia.com/gpu:NoSchedule)",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="worker gRPC port")
    parser.add_argument("--backoff-limit", type=int, default=3,
                        help="restarts before the job fails: per worker (indexed), of the whole job (tfjob, trainjob)")
    parser.add_argument("--cluster-runtime", action="store_true",
                        help="trainjob: a ClusterTrainingRuntime instead of a namespaced TrainingRuntime")


def _toleration(text: str):
    from components.launcher.config import Toleration

    key, _, effect = text.partition(":")
    key, eq, value = key.partition("=")
    return Toleration(key=key, operator="Equal" if eq else "Exists", value=value if eq else None, effect=effect or None)


def config_from_args(args: argparse.Namespace, trainer_args: list[str] | None):
    """LaunchConfig from parsed flags; ValueError names the bad field."""
    from components.launcher.config import DEFAULT_TRAINER_ARGS, DataVolume, LaunchConfig, Resources, Toleration

    selectors = {}
    for item in args.node_selector:
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"--node-selector {item!r} must be KEY=VALUE")
        selectors[key] = value
    workers = args.workers if args.workers is not None else (1 if args.kind == "job" else 2)
    return LaunchConfig(
        name=args.name,
        image=args.image,
        namespace=args.namespace,
        workers=workers,
        resources=Resources(args.cpu_request, args.cpu_limit, args.memory_request, args.memory_limit, args.gpus),
        volume=DataVolume(
            claim_name=None if args.data_host_path else (args.data_claim or "embedopt-data"),
            host_path=args.data_host_path,
            mount_path=args.mount_path,
            size=args.data_size,
            access_mode=args.data_access_mode,
            storage_class=args.storage_class,
        ),
        trainer_args=tuple(DEFAULT_TRAINER_ARGS if trainer_args is None else trainer_args),
        service_account=args.service_account,
        node_selector=selectors,
        tolerations=(Toleration(),) if args.toleration is None else tuple(_toleration(t) for t in args.toleration),
        port=args.port,
        backoff_limit_per_index=args.backoff_limit,
        image_pull_policy=args.image_pull_policy,
        active_deadline_seconds=args.active_deadline,
        tmp_size_limit=args.tmp_size,
        shm_size_limit=args.shm_size,
        cluster_runtime=args.cluster_runtime,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Render, submit and watch embedopt training jobs on Kubernetes.",
                                     formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_: str, passthrough: bool = False, **kwargs) -> argparse.ArgumentParser:
        formatter = PassthroughHelpFormatter if passthrough else HelpFormatter
        return sub.add_parser(name, help=help_, description=help_, formatter_class=formatter,
                              epilog=trainer_flags_epilog() if passthrough else None, **kwargs)

    render = command("render", "print the manifests as YAML (or write them with --output)", passthrough=True)
    _add_target(render)
    _add_config(render)
    render.add_argument("--output", "-o", metavar="DIR", help="write one file per object into DIR (default: print to stdout)")
    submit = command("submit", "create the objects in the cluster", passthrough=True)
    _add_target(submit)
    _add_config(submit)
    _add_cluster(submit)
    submit.add_argument("--dry-run", choices=("none", "server"), default="none", help="server: validate on the server, store nothing")
    submit.add_argument("--create-namespace", action="store_true", help="also create the namespace")
    _add_wait(submit)
    status = command("status", "per-worker state")
    _add_target(status)
    _add_cluster(status)
    _add_wait(status)
    logs = command("logs", "print (or --follow) one worker's log")
    _add_target(logs)
    _add_cluster(logs)
    logs.add_argument("--index", type=int, default=0, help="worker index (0 = chief)")
    logs.add_argument("--follow", "-f", action="store_true", help="keep streaming until the pod ends")
    delete = command("delete", "delete everything submit created for --name (a ClusterTrainingRuntime is kept: "
                     "it is cluster-scoped)")
    _add_target(delete, kind=False)
    _add_cluster(delete)
    delete.add_argument("--include-data", action="store_true", help="also delete the data PVC (and its data)")
    kustomize = command("kustomize", "regenerate the kustomize tree (k8s/) from the builders")
    kustomize.add_argument("--output", "-o", default="k8s", metavar="DIR", help="directory to (re)write")
    sub.add_parser("entrypoint", help="container entrypoint: derive TF_CONFIG, then run embedopt", add_help=False)
    return parser


def format_status(status) -> str:
    lines = [f"{status.kind} {status.name}: {status.state}" + (f" ({status.message})" if status.message else "")]
    for w in status.workers:
        lines.append(f"  worker {w.index}: {w.phase:<10} pod={w.pod} restarts={w.restarts}")
        lines += [f"    ! {p}" for p in w.problems]
    return "\n".join(lines)


def wait_for(backend, kind: str, name: str, timeout: float, interval: float, on_poll=None, clock=time.monotonic, sleep=time.sleep):
    """Poll until finished, an image pull failure, or `timeout` seconds; returns the last status."""
    deadline = clock() + timeout
    while True:
        status = backend.status(kind, name)
        if on_poll:
            on_poll(status)
        if status.finished or any("cannot pull image" in p for p in status.problems) or clock() >= deadline:
            return status
        sleep(max(0.0, min(interval, deadline - clock())))


def _backend(args):
    from components.launcher.backend import KubernetesBackend, load_api_client

    return KubernetesBackend(args.namespace, load_api_client(args.kubeconfig, args.context))


def _run(args, trainer_args) -> int:
    from components.launcher import builders, render

    if args.command == "kustomize":
        from components.launcher.kustomize import write_kustomize

        for path in write_kustomize(args.output):
            print(path)
        return 0
    if args.command in ("render", "submit"):
        config = config_from_args(args, trainer_args)
        objects = builders.build_objects(args.kind, config)
        shared = builders.shared_objects(config)
        if args.command == "render":
            objects = shared + objects
            if args.output:
                for path in render.write_files(objects, args.output):
                    print(path)
            else:
                sys.stdout.write(render.to_yaml(objects))
            return 0
        objects = shared[(0 if args.create_namespace else 1):] + objects
        backend = _backend(args)
        for line in backend.submit(objects, dry_run=args.dry_run == "server"):
            print(line)
        if not args.wait or args.dry_run == "server":
            return 0
    else:
        backend = _backend(args)
    if args.command == "delete":
        deleted = backend.delete(args.name, include_data=args.include_data)
        print("\n".join(f"deleted {d}" for d in deleted) if deleted else f"nothing labelled {args.name!r} in {args.namespace!r}")
        return 0
    if args.command == "logs":
        for chunk in backend.logs(args.kind, args.name, args.index, follow=args.follow):
            sys.stdout.write(chunk)
        return 0
    if not args.wait:
        status = backend.status(args.kind, args.name)
        print(format_status(status))
        return 1 if status.state in ("NotFound", "Failed") or status.problems else 0
    status = wait_for(backend, args.kind, args.name, args.timeout, args.interval, on_poll=lambda s: print(format_status(s), flush=True))
    if status.state == "Succeeded":
        return 0
    if not status.finished and not status.problems:
        print(f"{PROG}: still {status.state} after {args.timeout:g}s; check again with `{PROG} status`", file=sys.stderr)
    return 1


def main(argv: list[str]) -> int:
    if argv[:1] == ["entrypoint"]:
        return tf_config.main(argv[1:])
    own, trainer_args = _split_trainer_args(list(argv))
    args = build_parser().parse_args(own)
    from components.launcher.errors import LauncherError

    try:
        return _run(args, trainer_args)
    except ValueError as err:
        print(f"{PROG} {args.command}: {err}", file=sys.stderr)
        return 2
    except LauncherError as err:
        print(f"{PROG} {args.command}: {err}", file=sys.stderr)
        return 1
