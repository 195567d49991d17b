"""The kernel tests need the built library: build or load it once per session.

A failure to build or load fails these tests, except where no C++ compiler
exists (then they skip, saying so) or the kernels are switched off with
`EMBEDOPT_KERNELS=off`; on CI (`$CI` set) a missing compiler fails too.
"""

import os
import shutil

import pytest

from optimizers import kernels
from optimizers.kernels import build


@pytest.fixture(scope="session")
def kernel_ops():
    """The loaded op module (the first call may compile it: about a minute on 2 cores)."""
    module = kernels.load()
    if module is None:
        reason = kernels.status()[1]
        if reason.startswith("disabled by"):
            pytest.skip(f"embedopt kernels {reason}")
        if shutil.which(build.compiler()) is None and not os.environ.get("CI"):
            pytest.skip(f"embedopt kernels not built here: {reason}")
        pytest.fail(f"embedopt kernels failed to build or load: {reason}")
    return module
