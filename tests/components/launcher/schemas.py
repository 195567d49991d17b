"""Schema checks shared by the launcher tests.

Built-in kinds: `kubernetes-validate` against the Kubernetes 1.32 OpenAPI
schemas, strict (unknown fields fail). Custom resources: their CRDs from
`../shared/schemas/` (see SOURCES.md there), made strict the same way:
`additionalProperties: false` wherever the CRD lists properties and does not
preserve unknown fields.

- TFJob: kubeflow.org/v1, training-operator v1.9.0;
- TrainJob, TrainingRuntime, ClusterTrainingRuntime: trainer.kubeflow.org/v1alpha1, Trainer v2.3.0;
- JobSet: jobset.x-k8s.io/v1alpha2, JobSet v0.12.0. A training runtime's
  `spec.template.spec` is also validated as the spec of a JobSet, because
  that is what Trainer creates from it.

The CRDs' CEL rules (`x-kubernetes-validations`) are not evaluated here;
tests check the ones we depend on (e.g. the TrainJob name) directly.
"""

from __future__ import annotations

import copy
import functools
import os
import pathlib

import jsonschema
import kubernetes_validate
import pytest
import yaml

KUBERNETES_VERSION = "1.32"
REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]
SCHEMAS = REPO_ROOT.parent / "shared" / "schemas"
TFJOB_CRD = SCHEMAS / "kubeflow.org_tfjobs.yaml"
# kind -> (CRD file, version)
CRDS = {
    "TFJob": ("kubeflow.org_tfjobs.yaml", "v1"),
    "TrainJob": ("trainer.kubeflow.org_trainjobs.yaml", "v1alpha1"),
    "TrainingRuntime": ("trainer.kubeflow.org_trainingruntimes.yaml", "v1alpha1"),
    "ClusterTrainingRuntime": ("trainer.kubeflow.org_clustertrainingruntimes.yaml", "v1alpha1"),
    "JobSet": ("jobset.x-k8s.io_jobsets.yaml", "v1alpha2"),
}
RUNTIME_KINDS = ("TrainingRuntime", "ClusterTrainingRuntime")
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _strict(schema):
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema and not schema.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.lru_cache(maxsize=None)
def crd_schema(kind: str) -> dict:
    """The strict JSON schema of a custom resource `kind` (see CRDS)."""
    file_name, version_name = CRDS[kind]
    path = SCHEMAS / file_name
    if not path.exists():
        # CI always has ../shared/schemas: there a missing CRD is a broken set-up, never a reason to skip.
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"{kind} CRD not found at {path}")
    crd = yaml.load(path.read_text(), Loader=_Loader)
    assert crd["spec"]["names"]["kind"] == kind, f"{path} defines {crd['spec']['names']['kind']}, not {kind}"
    version = next(v for v in crd["spec"]["versions"] if v["name"] == version_name)
    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
    # metadata is validated by the API server, not the CRD; accept ObjectMeta's shape.
    schema["properties"]["metadata"] = {"type": "object"}
    return _strict(schema)


def tfjob_schema() -> dict:
    return crd_schema("TFJob")


def jobset_of_runtime(runtime: dict) -> dict:
    """The JobSet a training runtime's template describes (its name comes from the TrainJob)."""
    return {
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": {"name": "trainjob-name"},
        "spec": runtime["spec"]["template"]["spec"],
    }


def validate(obj: dict) -> None:
    """Raise when `obj` is not a valid object of its kind."""
    kind = obj["kind"]
    if kind in CRDS:
        jsonschema.validate(obj, crd_schema(kind))
        if kind in RUNTIME_KINDS:
            jsonschema.validate(jobset_of_runtime(obj), crd_schema("JobSet"))
    else:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
