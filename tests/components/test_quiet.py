"""TensorFlow's native start-up lines are dropped from a normal run's stderr, and nothing else is."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from components.quiet import is_native_noise

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Lines TensorFlow 2.21 printed on this machine at `import tensorflow` and device discovery.
NATIVE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796113157.951489   25697 port.cc:153] oneDNN custom operations are on. You may see slightly "
    "different numerical results due to floating-point round-off errors from different computation orders.",
    "I0000 00:00:1796113157.951818   25697 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will "
    "not be used.",
    "I0000 00:00:1796113158.000923   25697 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use "
    "available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 FMA, in other operations, rebuild "
    "TensorFlow with the appropriate compiler flags.",
    "E0000 00:00:1796113160.385490   25697 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed "
    "call to cuInit: UNKNOWN ERROR (303)",
]
KEPT = [
    "WARNING: the eval split is empty",
    "E0000 00:00:1796113160.385490   25697 collective_ops.cc:12] a real runtime error",
    "Traceback (most recent call last):",
    "ValueError: batch_size 7 must be a multiple of the 2 replicas",
]


@pytest.mark.parametrize("line", NATIVE)
def test_native_start_up_lines_are_noise(line):
    assert is_native_noise(line)
    assert is_native_noise(line + "\n")


@pytest.mark.parametrize("line", KEPT)
def test_other_lines_are_kept(line):
    assert not is_native_noise(line)


def _run(code: str, **env) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "EMBEDOPT_VERBOSE")}
    environment.update(env, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True, text=True,
                          timeout=120)


def test_filter_drops_only_native_lines_and_keeps_them_when_the_block_raises():
    lines = NATIVE + KEPT
    code = (
        "import os\n"
        "from components.quiet import native_output_filtered\n"
        "try:\n"
        "    with native_output_filtered():\n"
        f"        os.write(2, {''.join(line + chr(10) for line in lines)!r}.encode())\n"
        "        raise RuntimeError('boom')\n"
        "except RuntimeError:\n"
        "    pass\n"
        "os.write(2, b'after\\n')\n"
    )
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == KEPT + ["after"]


def test_tensorflow_imports_without_start_up_lines_unless_verbose():
    code = ("import sys\nfrom components.quiet import import_tensorflow\n"
            "tf = import_tensorflow(verbose=len(sys.argv) > 1)\nprint(tf.constant(2) + 1)")
    quiet = _run(code)
    assert quiet.returncode == 0, quiet.stderr
    assert "tf.Tensor(3" in quiet.stdout
    assert not any(is_native_noise(line) for line in quiet.stderr.splitlines()), quiet.stderr
    verbose = subprocess.run([sys.executable, "-c", code, "--verbose"], cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "0"}, timeout=120)
    # Without the filter TensorFlow's own lines come through (the check above could fail).
    assert any(is_native_noise(line) for line in verbose.stderr.splitlines()), verbose.stderr


def test_tensorflow_log_lines_are_printed_once_and_info_only_when_verbose():
    code = ("import sys\nfrom components.quiet import configure_logging, import_tensorflow\n"
            "verbose = len(sys.argv) > 1\ntf = import_tensorflow(verbose)\nconfigure_logging(verbose)\n"
            "tf.get_logger().info('an info line')\ntf.get_logger().warning('a warning line')\n")
    quiet = _run(code)
    assert quiet.stderr.count("a warning line") == 1, quiet.stderr
    assert "an info line" not in quiet.stderr
    verbose = subprocess.run([sys.executable, "-c", code, "--verbose"], cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": ROOT}, timeout=120)
    assert verbose.stderr.count("an info line") == 1, verbose.stderr


def test_preprocess_prints_no_beam_start_up_lines(tmp_path):
    fixture = os.path.join(ROOT, "tests", "fixtures", "criteo_small.tsv")
    proc = subprocess.run([sys.executable, "-m", "components.cli", "preprocess", "--input", fixture, "--output",
                           str(tmp_path / "out"), "--no-progress"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    for noise in ("Prism", "prism", "Running pipeline", "Renamed", "WriteImpl", "Creating state cache"):
        assert noise not in output, output
    assert "embedopt preprocess: train=" in proc.stdout
