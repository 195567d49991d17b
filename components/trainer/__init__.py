"""The trainer component: `run_fn(fn_args)` (TFX contract), DLRM-style model, tf.distribute.

`embedopt train` (components.trainer.cli) builds a `FnArgs` and calls
`run_fn`; `components/trainer/module.py` is the TFX module file.
"""
