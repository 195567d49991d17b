"""Schema checks shared by the launcher tests.

Built-in kinds: `kubernetes-validate` against the Kubernetes 1.32 OpenAPI
schemas, strict (unknown fields fail). TFJob: the kubeflow.org/v1 CRD from
`../shared/schemas/kubeflow.org_tfjobs.yaml` (training-operator v1.9.0),
made strict the same way: `additionalProperties: false` wherever the CRD
lists properties and does not preserve unknown fields.
"""

from __future__ import annotations

import copy
import os
import pathlib

import jsonschema
import kubernetes_validate
import pytest
import yaml

KUBERNETES_VERSION = "1.32"
REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]
TFJOB_CRD = REPO_ROOT.parent / "shared" / "schemas" / "kubeflow.org_tfjobs.yaml"


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


def tfjob_schema() -> dict:
    if not TFJOB_CRD.exists():
        # CI always has ../shared/schemas: there a missing CRD is a broken set-up, never a reason to skip.
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"TFJob CRD not found at {TFJOB_CRD}")
    crd = yaml.safe_load(TFJOB_CRD.read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
    # metadata is validated by the API server, not the CRD; accept ObjectMeta's shape.
    schema["properties"]["metadata"] = {"type": "object"}
    return _strict(schema)


def validate(obj: dict) -> None:
    """Raise when `obj` is not a valid object of its kind."""
    if obj["kind"] == "TFJob":
        jsonschema.validate(obj, tfjob_schema())
    else:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
