"""Finds or builds the kernel library, once per machine and TensorFlow build.

The library is compiled on first use into
`<cache root>/<key>/embedopt_kernels.so`, the cache root being
`$EMBEDOPT_KERNEL_CACHE` or `~/.cache/embedopt/kernels`. The key hashes
everything the binary depends on: the TensorFlow version, its compile and
link flags (include path and C++ ABI), our compiler flags and the sources.

Two profiles: `native` (the default, `-march=native`: AVX2/AVX-512 make the
Adam, Adagrad and FTRL rows about 1.5-2x faster here) adds the CPU's
instruction-set flags to the key, so a library built on one CPU is never
loaded on another (it could stop on an illegal instruction); `portable`
(baseline x86-64) runs anywhere. A build holds an exclusive file lock on
`<cache root>/<key>.lock`, so concurrent worker processes compile once while
the others wait and reuse it; the library is linked under a temporary name
and renamed into place, so a reader never sees half a file. A failed build
is recorded next to its log and not retried until a forced build.

Lookup order (`find_or_build`): a prebuilt library under
`optimizers/kernels/prebuilt/<key>/`, then the cache, native before
portable; only then is a native library compiled. A Docker image can ship
`python -m optimizers.kernels build --portable --output
<site-packages>/optimizers/kernels/prebuilt` to run on any CPU without a
compiler, and still compile a native one where a compiler exists.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import tensorflow as tf

LIBRARY = "embedopt_kernels.so"
SOURCE_DIR = Path(__file__).resolve().parent / "cc"
PREBUILT_DIR = Path(__file__).resolve().parent / "prebuilt"
FAILURE_MARKER = "FAILED"
NATIVE, PORTABLE = "native", "portable"
# -DNDEBUG as TensorFlow's own release build (bazel -c opt) compiles its headers;
# -fno-math-errno lets the row loops vectorise sqrt (nothing reads errno).
BASE_CXXFLAGS = (
    "-O3",
    "-fPIC",
    "-std=c++17",
    "-DNDEBUG",
    "-fno-math-errno",
    "-Wno-deprecated-declarations",
    "-Wno-interference-size",
)
COMPILE_TIMEOUT_S = 900


class BuildError(RuntimeError):
    """The library cannot be built; the message is one line saying why."""


def cache_root() -> Path:
    """The cache root: `$EMBEDOPT_KERNEL_CACHE`, else `~/.cache/embedopt/kernels`."""
    configured = os.environ.get("EMBEDOPT_KERNEL_CACHE")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "embedopt" / "kernels"


def compiler() -> str:
    """The C++ compiler command: `$CXX`, else `g++`."""
    return os.environ.get("CXX") or "g++"


def sources() -> list[Path]:
    """The C++ translation units and headers the library is built from."""
    if not SOURCE_DIR.is_dir():
        return []
    return sorted(p for p in SOURCE_DIR.iterdir() if p.suffix in (".cc", ".h"))


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith(("flags", "Features")):
                    return " ".join(sorted(line.split(":", 1)[1].split()))
    except OSError:
        pass
    import platform

    return platform.machine() + " " + platform.processor()


def cxxflags(profile: str = NATIVE) -> tuple[str, ...]:
    """Our compiler flags for `profile` (`NATIVE` or `PORTABLE`)."""
    if profile not in (NATIVE, PORTABLE):
        raise ValueError(f"profile must be {NATIVE!r} or {PORTABLE!r}, got {profile!r}")
    return BASE_CXXFLAGS + (("-march=native",) if profile == NATIVE else ())


def cache_key(profile: str = NATIVE) -> str:
    """A short hash of everything the library compiled for `profile` depends on."""
    digest = hashlib.sha256()
    for path in sources():
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    material = {
        "tensorflow": tf.__version__,
        "compile_flags": tf.sysconfig.get_compile_flags(),
        "link_flags": tf.sysconfig.get_link_flags(),
        "cxxflags": cxxflags(profile),
        "sources": digest.hexdigest(),
        "cpu": _cpu_flags() if profile == NATIVE else "",
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:20]


def library_path(root: Path, key: str) -> Path:
    """Where the library with cache key `key` lives under `root`."""
    return Path(root) / key / LIBRARY


def find_or_build() -> Path:
    """The path of a library for this machine: prebuilt, cached, or compiled now.

    Raises:
        BuildError: none is found and none can be compiled: no compiler, a
            compile error, or an earlier failed build of these same sources.
    """
    keys = {profile: cache_key(profile) for profile in (NATIVE, PORTABLE)}
    for profile in (NATIVE, PORTABLE):
        for root in (PREBUILT_DIR, cache_root()):
            path = library_path(root, keys[profile])
            if path.is_file():
                return path
    return build(cache_root(), NATIVE, key=keys[NATIVE])


def build(root: Path, profile: str = NATIVE, key: str | None = None, force: bool = False) -> Path:
    """Builds the library for `profile` under `root` unless it is there; returns its path.

    Args:
        root: the cache root, or an output directory laid out the same way.
        profile: `NATIVE` or `PORTABLE`.
        key: the cache key, when the caller has it already.
        force: rebuild even when a library or a failure is recorded.
    """
    key = key or cache_key(profile)
    target = library_path(root, key)
    if target.is_file() and not force:
        return target
    # Neither is recorded as a failure: installing what is missing fixes it.
    if not any(p.suffix == ".cc" for p in sources()):
        raise BuildError(f"no kernel sources in {SOURCE_DIR} (installed without its package data?)")
    cxx = compiler()
    if shutil.which(cxx) is None:
        raise BuildError(f"no C++ compiler: {cxx!r} (from $CXX, default g++) is not on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(Path(root) / f"{key}.lock"):
        marker = target.parent / FAILURE_MARKER
        if not force:
            if target.is_file():  # another process built it while we waited
                return target
            if marker.is_file():
                raise BuildError(marker.read_text(encoding="utf-8").strip() +
                                 " (recorded; `python -m optimizers.kernels build --force` retries)")
        marker.unlink(missing_ok=True)
        logging.getLogger(__name__).warning(
            "building embedopt's fused CPU kernels into %s, once for this machine and TensorFlow build "
            "(about a minute on 2 cores)", target.parent)
        try:
            _compile(target, cxxflags(profile))
        except BuildError as error:
            marker.write_text(str(error) + "\n", encoding="utf-8")
            raise
    return target


@contextlib.contextmanager
def _exclusive_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _compile(target: Path, flags: tuple[str, ...]) -> None:
    """Compiles each translation unit in parallel, links, renames into place."""
    cxx = compiler()
    work = target.parent / f"tmp-{os.getpid()}"
    work.mkdir(exist_ok=True)
    log_path = target.parent / "build.log"
    flags = [*flags, *tf.sysconfig.get_compile_flags()]
    units = [p for p in sources() if p.suffix == ".cc"]
    commands = [[cxx, *flags, "-c", str(unit), "-o", str(work / (unit.stem + ".o"))] for unit in units]
    partial = work / (LIBRARY + ".partial")
    link = [cxx, "-shared", *(c[-1] for c in commands), "-o", str(partial), *tf.sysconfig.get_link_flags()]
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(len(commands), os.cpu_count() or 1))) as pool:
            results = list(pool.map(_run, commands))
        if all(r.returncode == 0 for r in results):
            results.append(_run(link))
        with open(log_path, "w", encoding="utf-8") as log:
            for result in results:
                log.write("$ " + " ".join(result.args) + "\n" + result.stdout + "\n")
        failed = next((r for r in results if r.returncode != 0), None)
        if failed is not None:
            raise BuildError(f"compile failed: {_first_error(failed.stdout)} (log: {log_path})")
        os.replace(partial, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(command: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=COMPILE_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return subprocess.CompletedProcess(command, 1, stdout=f"error: {error}")


def _first_error(output: str) -> str:
    """The compiler's first `...: error: ...` line (or its first line)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return next((line for line in lines if re.search(r"\berror:", line)), lines[0] if lines else "no output")
