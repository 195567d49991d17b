"""TFX-style components around the `optimizers` package.

Each component is a spec (a dataclass of inputs, outputs and parameters), an
executor that does the work, and an `embedopt` subcommand. Dependencies point
one way: `components` imports `optimizers`, never the reverse.
"""
