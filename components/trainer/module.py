"""TFX module file: `tfx.components.Trainer(module_file=".../components/trainer/module.py", ...)`.

TFX imports this file and calls `run_fn(fn_args)`. Pass our settings in
`custom_config` (see `components.trainer.fn_args` for the keys); the
preprocess `metadata.json` is found from `schema_path` when it points at it,
else `custom_config["metadata_path"]`, else beside `Split-train`.
"""

from components.trainer.run import run_fn

__all__ = ["run_fn"]
