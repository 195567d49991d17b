"""Entry point of a benchmark child process: `python -m benchmarks._child MODULE:FUNC KWARGS_JSON OUT`."""

from __future__ import annotations

import importlib
import json
import sys

from benchmarks.harness import peak_rss_bytes


def main(argv: list[str]) -> int:
    target, kwargs, out = argv
    module_name, func_name = target.split(":")
    result = getattr(importlib.import_module(module_name), func_name)(**json.loads(kwargs))
    result["peak_rss_bytes"] = peak_rss_bytes()
    with open(out, "w", encoding="utf-8") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
