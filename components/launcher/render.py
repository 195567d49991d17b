"""Typed objects -> plain dicts -> YAML, the way the API server would see them."""

from __future__ import annotations

import os
from typing import Any

import yaml
from kubernetes.client import ApiClient

_API = ApiClient()


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the trainer-args ConfigMap) as readable `|` blocks."""


def _represent_str(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def to_dict(obj: Any) -> dict[str, Any]:
    """camelCase dict without None fields; works for typed models and dicts holding them."""
    return _API.sanitize_for_serialization(obj)


def to_yaml(objects: list[Any]) -> str:
    return dump_all([to_dict(o) for o in objects])


def dump_all(docs: list[dict[str, Any]]) -> str:
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def file_name(obj: dict[str, Any]) -> str:
    """`<kind>-<name>.yaml` in lower case, e.g. `job-embedopt-train.yaml`."""
    return f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"


def write_files(objects: list[Any], directory: str) -> list[str]:
    """One YAML file per object; returns the paths written."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for obj in objects:
        data = to_dict(obj)
        path = os.path.join(directory, file_name(data))
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(dump_all([data]))
        paths.append(path)
    return paths
