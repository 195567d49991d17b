"""Container entrypoint: derive `TF_CONFIG` for Indexed Jobs and JobSets, then run the trainer.

An Indexed Job gives each pod `JOB_COMPLETION_INDEX` and the hostname
`<job>-<index>`; with the pod's `subdomain` set to a headless Service, every
worker is reachable as `<job>-<index>.<service>`. The builders put the job
name, service name, worker count and port into `EMBEDOPT_*` variables, and
this entrypoint turns them into the `TF_CONFIG` that
`MultiWorkerMirroredStrategy` reads (worker 0 acts as chief).

Kubeflow Trainer v2 runs a TrainJob as a JobSet and has no TensorFlow
policy, so nothing sets `TF_CONFIG` there. A JobSet (v0.12.0) names the Job
of replicatedJob `<rjob>`, replica `<j>`, `<jobset>-<rjob>-<j>` and makes it
Indexed, so its pods get `JOB_COMPLETION_INDEX` and the hostname
`<jobset>-<rjob>-<j>-<index>`; with `network.enableDNSHostnames` (the
default) their subdomain is `network.subdomain`, else the JobSet's name,
behind a headless Service of that name (`Network` in
api/jobset/v1alpha2/jobset_types.go, `constructJob` and `GetSubdomain` in
pkg/controllers/jobset_controller.go, completionMode and DNS defaults in
pkg/webhooks/jobset_webhook.go). Trainer v2.3.0 gives the JobSet the
TrainJob's name and builds the same endpoints
(`IdentifyPodNetwork` in pkg/runtime/framework/plugins/jobset/jobset.go).
JobSet puts the JobSet name, replicatedJob name and Job index on every pod
as annotations (`jobset.sigs.k8s.io/jobset-name`, `.../replicatedjob-name`,
`.../job-index`, `labelAndAnnotateObject`); the training runtime hands them
to the container through the Downward API as `EMBEDOPT_JOBSET_NAME`,
`EMBEDOPT_REPLICATED_JOB` and `EMBEDOPT_JOB_INDEX`. So a JobSet pod is the
Indexed-Job case with job `<jobset>-<rjob>-<j>` and service `<subdomain>`.

A `TF_CONFIG` that is already set (the TFJob operator sets one) is left
alone, and without `JOB_COMPLETION_INDEX` (a single-GPU Job) nothing is set.

    embedopt k8s entrypoint [--args-file FILE] -- train --optimizer lazy_adam
        runs `embedopt train --optimizer lazy_adam <lines of FILE>`
    embedopt k8s entrypoint --exec -- python script.py
        runs any program with the derived TF_CONFIG

This module imports only the standard library, so the image needs no extras.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping

ENV_TF_CONFIG = "TF_CONFIG"
ENV_INDEX = "JOB_COMPLETION_INDEX"
ENV_JOB = "EMBEDOPT_JOB_NAME"
ENV_SERVICE = "EMBEDOPT_SERVICE"
ENV_WORKERS = "EMBEDOPT_WORKERS"
ENV_PORT = "EMBEDOPT_PORT"
ENV_TEMPLATE = "EMBEDOPT_WORKER_ADDRESS_TEMPLATE"
ENV_JOBSET = "EMBEDOPT_JOBSET_NAME"
ENV_REPLICATED_JOB = "EMBEDOPT_REPLICATED_JOB"
ENV_JOB_INDEX = "EMBEDOPT_JOB_INDEX"
# Where the training runtime's Downward API reads them (JobSet v0.12.0 annotates every pod with these).
JOBSET_FIELDS = {
    ENV_JOBSET: "metadata.annotations['jobset.sigs.k8s.io/jobset-name']",
    ENV_REPLICATED_JOB: "metadata.annotations['jobset.sigs.k8s.io/replicatedjob-name']",
    ENV_JOB_INDEX: "metadata.annotations['jobset.sigs.k8s.io/job-index']",
}
# Fields: job, index, service, port, and indexed_port (= port + index, for
# several workers on one host, as in tests or `docker run --network host`).
DEFAULT_TEMPLATE = "{job}-{index}.{service}:{port}"

log = logging.getLogger(__name__)


def worker_addresses(job: str, service: str, workers: int, port: int, template: str = DEFAULT_TEMPLATE) -> list[str]:
    """The `host:port` of every worker, in index order."""
    if workers < 1:
        raise ValueError(f"workers={workers} must be at least 1")
    try:
        return [
            template.format(job=job, index=i, service=service, port=port, indexed_port=port + i)
            for i in range(workers)
        ]
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(
            f"worker address template {template!r} is invalid ({err}); "
            "use the fields {job}, {index}, {service}, {port}, {indexed_port}"
        ) from None


def derive_tf_config(index: int, job: str, service: str, workers: int, port: int, template: str = DEFAULT_TEMPLATE) -> dict:
    """TF_CONFIG (as a dict) for worker `index` of an Indexed Job."""
    if not 0 <= index < workers:
        raise ValueError(f"{ENV_INDEX}={index} must be in [0, {workers}) for {workers} workers")
    return {
        "cluster": {"worker": worker_addresses(job, service, workers, port, template)},
        "task": {"type": "worker", "index": index},
    }


def _required_env(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "")
    if not value:
        raise ValueError(f"{ENV_INDEX} is set but {name} is not; the Indexed Job or training runtime manifest must set it")
    return value


def _int_env(env: Mapping[str, str], name: str) -> int:
    value = _required_env(env, name)
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} must be an integer") from None


def _job_and_service(env: Mapping[str, str]) -> tuple[str, str]:
    """The Indexed Job's name and the headless Service (subdomain) its pods live under."""
    if not env.get(ENV_JOBSET):
        job = _required_env(env, ENV_JOB)
        return job, env.get(ENV_SERVICE) or job
    jobset = env[ENV_JOBSET]
    job_index = _int_env(env, ENV_JOB_INDEX)
    if job_index != 0:
        # Trainer v2.3.0 runs one Job per replicatedJob (it sets replicas: 1), so all workers share job index 0.
        raise ValueError(
            f"{ENV_JOB_INDEX}={job_index}: the workers must be the pods of one Indexed Job (replicatedJob replicas: 1); "
            "scale with numNodes (parallelism), not with replicas"
        )
    return f"{jobset}-{_required_env(env, ENV_REPLICATED_JOB)}-{job_index}", env.get(ENV_SERVICE) or jobset


def tf_config_from_env(env: Mapping[str, str]) -> str | None:
    """The TF_CONFIG JSON to set, or None when the environment should be left as it is."""
    if env.get(ENV_TF_CONFIG):
        return None
    if env.get(ENV_INDEX, "") == "":
        return None
    job, service = _job_and_service(env)
    config = derive_tf_config(
        index=_int_env(env, ENV_INDEX),
        job=job,
        service=service,
        workers=_int_env(env, ENV_WORKERS),
        port=_int_env(env, ENV_PORT),
        template=env.get(ENV_TEMPLATE) or DEFAULT_TEMPLATE,
    )
    if len(config["cluster"]["worker"]) == 1:
        return None  # one worker needs no cluster; the trainer picks MirroredStrategy
    return json.dumps(config, separators=(",", ":"))


def read_args_file(path: str) -> list[str]:
    """One argument per line (a ConfigMap value); blank lines and '#' comments are skipped."""
    with open(path, encoding="utf-8") as handle:
        lines = [line.rstrip("\r\n") for line in handle]
    return [line for line in lines if line.strip() and not line.lstrip().startswith("#")]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="embedopt k8s entrypoint",
        description="Set TF_CONFIG for an Indexed Job or JobSet worker (unless set), then run `embedopt ARGS` "
        "(or ARGS with --exec).",
    )
    parser.add_argument("--args-file", help="append one argument per line from this file (the trainer-args ConfigMap); "
                        "default: none")
    parser.add_argument("--exec", dest="exec_program", action="store_true",
                        help="ARGS is a full command, not an embedopt subcommand (default: off)")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="after --: the subcommand (e.g. train) and its flags")
    return parser


def command_and_env(argv: list[str], env: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """Resolve the program to run and its environment, without running it."""
    options = build_parser().parse_args(argv)
    args = options.args[1:] if options.args[:1] == ["--"] else list(options.args)
    if options.args_file:
        args += read_args_file(options.args_file)
    if not args:
        raise ValueError("nothing to run: give a subcommand after --, e.g. `-- train --train-files ...`")
    command = args if options.exec_program else [sys.executable, "-m", "components.cli", *args]
    new_env = dict(env)
    tf_config = tf_config_from_env(env)
    if tf_config is not None:
        new_env[ENV_TF_CONFIG] = tf_config
    return command, new_env


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        command, env = command_and_env(argv, os.environ)
    except (ValueError, OSError) as err:
        print(f"embedopt k8s entrypoint: {err}", file=sys.stderr)
        return 2
    if ENV_TF_CONFIG in env and env.get(ENV_TF_CONFIG) != os.environ.get(ENV_TF_CONFIG):
        log.info("derived TF_CONFIG=%s", env[ENV_TF_CONFIG])
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(command[0], command, env)
    except OSError as err:
        print(f"embedopt k8s entrypoint: cannot run {command[0]!r}: {err}", file=sys.stderr)
        return 127
