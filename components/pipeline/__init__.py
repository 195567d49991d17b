"""Kubeflow Pipelines (KFP v2) integration: synth or external logs -> preprocess -> train.

Needs the `kfp` extra (`pip install '.[kfp]'` from the repository root). The TFX route needs
nothing from here: a TFX `Trainer(module_file=...)` points at
`components/trainer/module.py`, which exposes `run_fn(fn_args)`.
"""
