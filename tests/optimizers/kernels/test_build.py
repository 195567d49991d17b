"""The build cache: keys, lock, failure reports, lookup order and the command line.

These build tiny stand-in sources (no TensorFlow headers), so they take
seconds; the real library is built once by the `kernel_ops` fixture.
"""

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from optimizers import kernels
from optimizers.kernels import build

REPO = Path(__file__).resolve().parents[3]
needs_compiler = pytest.mark.skipif(shutil.which(build.compiler()) is None and not os.environ.get("CI"),
                                    reason="no C++ compiler")


@pytest.fixture
def tiny_sources(tmp_path, monkeypatch):
    """Points the build at one small translation unit; returns its directory."""
    source_dir = tmp_path / "cc"
    source_dir.mkdir()
    (source_dir / "tiny.cc").write_text('extern "C" int embedopt_tiny() { return 42; }\n')
    monkeypatch.setattr(build, "SOURCE_DIR", source_dir)
    monkeypatch.setattr(build, "PREBUILT_DIR", tmp_path / "prebuilt")
    monkeypatch.setenv("EMBEDOPT_KERNEL_CACHE", str(tmp_path / "cache"))
    return source_dir


def test_key_depends_on_sources_flags_and_profile(tiny_sources, monkeypatch):
    key = build.cache_key()
    assert build.cache_key() == key  # stable
    assert build.cache_key(build.PORTABLE) != key
    (tiny_sources / "tiny.cc").write_text('extern "C" int embedopt_tiny() { return 43; }\n')
    changed = build.cache_key()
    assert changed != key
    monkeypatch.setattr(build, "BASE_CXXFLAGS", build.BASE_CXXFLAGS + ("-O2",))
    assert build.cache_key() != changed


def test_cache_root_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("EMBEDOPT_KERNEL_CACHE", str(tmp_path))
    assert build.cache_root() == tmp_path
    monkeypatch.delenv("EMBEDOPT_KERNEL_CACHE")
    assert build.cache_root() == Path.home() / ".cache" / "embedopt" / "kernels"


@needs_compiler
def test_concurrent_builds_compile_once(tiny_sources, monkeypatch):
    compiles = []
    real_compile = build._compile
    monkeypatch.setattr(build, "_compile", lambda *a: (compiles.append(1), real_compile(*a)))
    paths = []
    threads = [threading.Thread(target=lambda: paths.append(build.find_or_build())) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(compiles) == 1
    assert len(set(paths)) == 1 and paths[0].is_file()
    assert paths[0] == build.library_path(build.cache_root(), build.cache_key(build.NATIVE))
    assert [p.name for p in paths[0].parent.iterdir() if p.name.startswith("tmp-")] == []


@needs_compiler
def test_compile_error_names_first_error_and_log_and_is_recorded(tiny_sources, monkeypatch):
    (tiny_sources / "broken.cc").write_text("int f() { return undeclared_name; }\n")
    root = build.cache_root()
    with pytest.raises(build.BuildError, match=r"compile failed: .*error.*undeclared_name.*\(log: .*build\.log\)"):
        build.build(root)
    log = build.library_path(root, build.cache_key()).parent / "build.log"
    assert "undeclared_name" in log.read_text()
    with pytest.raises(build.BuildError, match=r"recorded; `python -m optimizers.kernels build --force` retries"):
        build.build(root)
    (tiny_sources / "broken.cc").write_text("int f() { return 0; }\n")  # a new key: built afresh
    assert build.build(root).is_file()


def test_no_compiler_is_reported_and_not_recorded(tiny_sources, monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with pytest.raises(build.BuildError, match=r"no C\+\+ compiler: '/nonexistent/c\+\+'"):
        build.build(build.cache_root())
    assert not (build.library_path(build.cache_root(), build.cache_key()).parent / build.FAILURE_MARKER).exists()


def test_prebuilt_then_cache_native_before_portable(tiny_sources, monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/c++")  # nothing may be compiled here

    def place(root, profile):
        path = build.library_path(root, build.cache_key(profile))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        return path

    portable_cache = place(build.cache_root(), build.PORTABLE)
    assert build.find_or_build() == portable_cache
    portable_prebuilt = place(build.PREBUILT_DIR, build.PORTABLE)
    assert build.find_or_build() == portable_prebuilt
    native_cache = place(build.cache_root(), build.NATIVE)
    assert build.find_or_build() == native_cache
    assert build.find_or_build() == native_cache
    native_prebuilt = place(build.PREBUILT_DIR, build.NATIVE)
    assert build.find_or_build() == native_prebuilt


def test_status_of_this_session(kernel_ops):
    available, reason = kernels.status()
    assert available and reason.startswith("loaded ")
    assert kernels.load() is kernel_ops


def _cli(*args, **env):
    return subprocess.run([sys.executable, "-m", "optimizers.kernels", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, check=False, env={**os.environ, **env})


def test_cli_status_when_disabled_by_environment():
    result = _cli("status", EMBEDOPT_KERNELS="off")
    assert result.returncode == 1
    assert result.stdout.strip() == "unavailable: disabled by EMBEDOPT_KERNELS=off"
    assert "embedopt kernels unavailable, using TF ops: disabled by EMBEDOPT_KERNELS=off" in result.stderr


def test_cli_build_into_output_reuses_a_matching_build(kernel_ops, tmp_path):
    """`build --output DIR` prints the library path; a matching build there is not recompiled."""
    loaded = Path(kernels.status()[1].removeprefix("loaded "))
    key = build.cache_key()
    target = build.library_path(tmp_path, key)
    target.parent.mkdir(parents=True)
    shutil.copy(loaded, target)
    result = _cli("build", "--output", str(tmp_path), CXX="/nonexistent/c++")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == str(target)


def test_no_compiler_trains_on_the_tf_path_with_one_warning_line(tmp_path):
    """A fresh process whose compiler is missing: steps run on the TF-ops path, and the reason is logged once,
    by the library loader, not again by each optimizer that falls back."""
    code = (
        "import tensorflow as tf, optimizers\n"
        "table = optimizers.SparseEmbedding(100, 4)\n"
        "opt = optimizers.get('adagrad')\n"
        "ids = tf.constant([[1, 2], [3, 1]])\n"
        "for _ in range(2):\n"
        "    with tf.GradientTape() as tape:\n"
        "        loss = tf.reduce_sum(table(ids))\n"
        "    opt.apply_gradients(zip(tape.gradient(loss, table.trainable_variables), table.trainable_variables))\n"
        "print(opt.apply_path(table.embeddings.value))\n"
    )
    env = {**os.environ, "CXX": "/nonexistent/c++", "EMBEDOPT_KERNEL_CACHE": str(tmp_path / "cache"),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("EMBEDOPT_KERNELS", None)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                            env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "TF ops: no C++ compiler: '/nonexistent/c++' (from $CXX, default g++) is not on PATH"
    warnings = [line for line in result.stderr.splitlines() if "c++" in line.lower() or "TF ops" in line]
    assert warnings == ["embedopt kernels unavailable, using TF ops: no C++ compiler: '/nonexistent/c++' "
                        "(from $CXX, default g++) is not on PATH"], result.stderr[-2000:]
