"""Command line: `python -m optimizers.kernels build|status`.

`build` compiles the kernel library (e.g. at Docker build time) into the
cache root, or into `--output DIR` laid out as a cache root; with `--output
<package>/optimizers/kernels/prebuilt` it ships with the installed package and
is found first by every later process. `--portable` builds for any x86-64 CPU
instead of this one (for an image that may run elsewhere without a compiler).
A matching build is reused unless `--force`. It prints the library's path.
`status` prints whether the kernels load, and why not.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m optimizers.kernels", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="compile the kernel library")
    build_cmd.add_argument("--output", type=Path, default=None,
                           help="root directory for the build (default: $EMBEDOPT_KERNEL_CACHE or "
                                "~/.cache/embedopt/kernels)")
    build_cmd.add_argument("--portable", action="store_true",
                           help="build for any CPU of this architecture instead of -march=native")
    build_cmd.add_argument("--force", action="store_true", help="recompile even if a matching build exists")
    commands.add_parser("status", help="say whether the kernels load, and why not")
    args = parser.parse_args(argv)

    from optimizers import kernels
    from optimizers.kernels import build

    if args.command == "build":
        root = args.output or build.cache_root()
        try:
            path = build.build(root, build.PORTABLE if args.portable else build.NATIVE, force=args.force)
        except build.BuildError as error:
            print(f"build failed: {error}", file=sys.stderr)
            return 1
        print(path)
        return 0
    available, reason = kernels.status()
    print(("available: " if available else "unavailable: ") + reason)
    return 0 if available else 1


if __name__ == "__main__":
    sys.exit(main())
