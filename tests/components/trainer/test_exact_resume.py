"""A resumed run reaches the weights of an uninterrupted one (issue 11, item 6).

Before the fix the input position was not restored: a run resumed at step k
read the training data from its start again, so its steps k+1.. saw other
batches than the uninterrupted run's, and its weights differed.
"""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

from components.trainer.run import run_fn
from tests.components.trainer.test_multi_process import ENV, ROOT, summaries, train_cmd
from tests.components.trainer.test_run_fn import make_fn_args

STEPS, STOP = 12, 5


def test_resume_single_process_matches_an_uninterrupted_run(planted_data, tmp_path):
    config = dict(strategy="default", checkpoint_every=1000, seed=3)
    whole = run_fn(make_fn_args(planted_data, str(tmp_path / "whole"), steps=STEPS, **config))
    first = make_fn_args(planted_data, str(tmp_path / "resumed"), steps=STOP, **config)
    run_fn(first)
    first.train_steps = STEPS
    resumed = run_fn(first)
    assert resumed["resumed_from_step"] == STOP and resumed["steps"] == STEPS
    np.testing.assert_allclose(resumed["weights_checksum"], whole["weights_checksum"], rtol=1e-5, atol=1e-6)
    assert resumed["eval_auc"] == pytest.approx(whole["eval_auc"], abs=1e-6)


@pytest.mark.slow
def test_resume_two_workers_matches_an_uninterrupted_run(planted_data, tmp_path):
    def run(out, steps):
        proc = subprocess.run(train_cmd(planted_data, out, steps, "--local-workers", "2", "--checkpoint-every", "1000",
                                        "--seed", "3"),
                              cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return summaries(proc.stdout)["[worker 0]"]

    whole = run(str(tmp_path / "whole"), STEPS)
    run(str(tmp_path / "resumed"), STOP)
    resumed = run(str(tmp_path / "resumed"), STEPS)
    assert resumed["resumed_from_step"] == STOP
    np.testing.assert_allclose(resumed["weights_checksum"], whole["weights_checksum"], rtol=1e-5, atol=1e-6)
