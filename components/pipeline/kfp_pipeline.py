"""The KFP v2 pipeline, built from container components on the project image.

Each step runs `embedopt <command>` in the image, so the pipeline executes
exactly what the CLI does:

    synth       embedopt synth --rows N --output <Dataset>          (source "synth")
    importer    an existing Criteo-format file at input_uri        (source "external")
    preprocess  embedopt preprocess --input <Dataset> --output <Dataset>
    train       embedopt train --data <Dataset> --output <Model>    (GPU)

Artifacts are KFP `Dataset`/`Model` paths; on Vertex AI or a KFP install
with an object store they are `/gcs/...`/`/minio/...` paths that the steps
read and write like local files.
"""

# No `from __future__ import annotations`: KFP reads parameter types from live annotations.

from kfp import dsl

from components.launcher.config import DEFAULT_IMAGE

PIPELINE_NAME = "embedopt-train"
SOURCES = ("synth", "external")
STEP_SYNTH, STEP_IMPORT, STEP_PREPROCESS, STEP_TRAIN = "synth", "import-logs", "preprocess", "train"


def make_components(image: str):
    """Container components bound to `image` (KFP fixes the image when a component is defined)."""

    @dsl.container_component
    def synth(rows: int, seed: int, logs: dsl.Output[dsl.Dataset]):
        return dsl.ContainerSpec(
            image=image,
            command=["embedopt"],
            args=["synth", "--rows", rows, "--seed", seed, "--output", logs.path, "--no-progress"],
        )

    @dsl.container_component
    def preprocess(logs: dsl.Input[dsl.Dataset], eval_fraction: float, examples: dsl.Output[dsl.Dataset]):
        return dsl.ContainerSpec(
            image=image,
            command=["embedopt"],
            args=["preprocess", "--input", logs.path, "--output", examples.path, "--eval-fraction", eval_fraction],
        )

    @dsl.container_component
    def train(examples: dsl.Input[dsl.Dataset], train_steps: int, optimizer: str, model: dsl.Output[dsl.Model]):
        return dsl.ContainerSpec(
            image=image,
            command=["embedopt"],
            args=["train", "--data", examples.path, "--output", model.path,
                  "--train-steps", train_steps, "--optimizer", optimizer, "--no-progress"],
        )

    return synth, preprocess, train


def build_pipeline(image: str = DEFAULT_IMAGE, source: str = "synth", gpus: int = 1):
    """The pipeline function to hand to `kfp.compiler.Compiler().compile`."""
    if source not in SOURCES:
        raise ValueError(f"source={source!r} must be one of {', '.join(SOURCES)}")
    if gpus < 0:
        raise ValueError(f"gpus={gpus} must be >= 0")
    synth_op, preprocess_op, train_op = make_components(image)

    def steps(logs, eval_fraction: float, train_steps: int, optimizer: str):
        prep = preprocess_op(logs=logs, eval_fraction=eval_fraction).set_display_name(STEP_PREPROCESS)
        fit = train_op(examples=prep.outputs["examples"], train_steps=train_steps, optimizer=optimizer)
        fit.set_display_name(STEP_TRAIN).set_cpu_limit("8").set_memory_limit("32G")
        if gpus:
            fit.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(gpus)

    if source == "synth":

        @dsl.pipeline(name=PIPELINE_NAME, description="Synthetic Criteo logs -> preprocess (Beam) -> train (embedopt)")
        def pipeline(rows: int = 100_000, seed: int = 0, eval_fraction: float = 0.1,
                     train_steps: int = 1000, optimizer: str = "lazy_adam"):
            logs = synth_op(rows=rows, seed=seed).set_display_name(STEP_SYNTH)
            steps(logs.outputs["logs"], eval_fraction, train_steps, optimizer)

    else:

        @dsl.pipeline(name=PIPELINE_NAME, description="Criteo-format logs at input_uri -> preprocess (Beam) -> train")
        def pipeline(input_uri: str, eval_fraction: float = 0.1, train_steps: int = 1000, optimizer: str = "lazy_adam"):
            logs = dsl.importer(artifact_uri=input_uri, artifact_class=dsl.Dataset, reimport=False)
            logs.set_display_name(STEP_IMPORT)
            steps(logs.output, eval_fraction, train_steps, optimizer)

    return pipeline


def compile_pipeline(output: str, image: str = DEFAULT_IMAGE, source: str = "synth", gpus: int = 1) -> str:
    from kfp import compiler

    compiler.Compiler().compile(build_pipeline(image, source, gpus), package_path=output)
    return output
