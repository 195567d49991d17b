"""Two training runs into one model_run_dir (issue 11, item 4): the second refuses instead of overwriting."""

import os

import pytest

from components.lockfile import lock_inside
from components.trainer.run import run_fn
from tests.components.trainer.test_run_fn import make_fn_args


def test_second_run_into_a_held_run_dir_is_refused(planted_data, tmp_path):
    fn_args = make_fn_args(planted_data, str(tmp_path), steps=2)
    with lock_inside(fn_args.model_run_dir, "run dir"):
        with pytest.raises(ValueError, match=f"model_run_dir '{fn_args.model_run_dir}' is in use by another run "
                                             f"\\(process {os.getpid()} on "):
            run_fn(fn_args)
    assert not os.path.exists(os.path.join(fn_args.model_run_dir, "metrics.json"))


def test_the_lock_is_released_after_a_run(planted_data, tmp_path):
    fn_args = make_fn_args(planted_data, str(tmp_path), steps=2)
    run_fn(fn_args)
    assert not os.path.exists(os.path.join(fn_args.model_run_dir, ".embedopt-lock"))
    fn_args.train_steps = 3
    assert run_fn(fn_args)["resumed_from_step"] == 2  # a later run takes it again
