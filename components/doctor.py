"""`embedopt doctor`: what this machine gives embedopt, and which path each optimizer's sparse step takes.

Prints the versions that matter (Python, TensorFlow, Keras, NumPy, Beam,
pyarrow, and torch/fbgemm when the `torchrec` extra is there), the devices
TensorFlow sees, whether the fused CPU kernels load (building them once if
they are not built yet) and why not, whether they put large tables on huge
pages, and for each optimizer and the
embedding lookup the path a step takes on a table on the first CPU, or on the
first GPU when there is one. `--json` prints the same as one JSON object.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import sys

from components.cli import HelpFormatter

PROG = "embedopt doctor"
PACKAGES = ("tensorflow", "keras", "tf-keras", "numpy", "apache-beam", "pyarrow", "tfx-bsl", "torch", "fbgemm-gpu-cpu")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, formatter_class=HelpFormatter, description=__doc__.split("\n\n")[1])
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    p.add_argument("--verbose", "-v", action="store_true", help="show TensorFlow's own start-up and INFO logs")
    return p


def _versions() -> dict[str, str | None]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def diagnose() -> dict:
    """Versions, devices, kernel status and the apply path of every optimizer (a JSON-able dict)."""
    import tensorflow as tf

    import optimizers
    from optimizers import fast_path, kernels

    available, reason = kernels.status()
    devices = [f"{d.device_type}:{d.name.rsplit(':', 1)[-1]}" for d in tf.config.list_physical_devices()]
    gpus = tf.config.list_logical_devices("GPU")
    device = gpus[0].name if gpus else tf.config.list_logical_devices("CPU")[0].name
    with tf.device(device):
        table = tf.Variable(tf.zeros([2, 2]), name="table")
    paths = {name: optimizers.get(name).apply_path(table) for name in optimizers.OPTIMIZERS}
    lookup = fast_path.fallback_reason(table)
    paths["SparseEmbedding lookup"] = fast_path.FUSED if lookup is None else f"TF ops: {lookup}"
    return {"versions": _versions(), "devices": devices, "table_device": device,
            "kernels": {"available": available, "detail": reason, "huge_pages": kernels.huge_pages() if available else "not used (the kernels are not loaded)"},
            "apply_paths": paths}


def report(found: dict) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in found["versions"].items() if v)
    missing = [k for k, v in found["versions"].items() if not v]
    kernels = found["kernels"]
    lines = [f"{PROG}: {versions}" + (f" (not installed: {', '.join(missing)})" if missing else ""),
             f"  devices: {', '.join(found['devices'])}",
             f"  fused kernels: {'yes' if kernels['available'] else 'no'} ({kernels['detail']})",
             f"  huge pages for large tables: {kernels['huge_pages']}",
             f"  sparse step of a table on {found['table_device']}:"]
    width = max(len(name) for name in found["apply_paths"])
    lines += [f"    {name:<{width}}  {path}" for name, path in found["apply_paths"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from components.quiet import configure_logging, import_tensorflow

    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    import_tensorflow(args.verbose)
    found = diagnose()
    print(json.dumps(found, indent=1) if args.json else report(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
