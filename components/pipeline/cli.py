"""`embedopt pipeline compile --output pipeline.yaml`: the KFP v2 pipeline as IR YAML.

Upload the file in the Kubeflow Pipelines UI, or run it with
`kfp.Client().create_run_from_pipeline_package("pipeline.yaml", arguments={...})`
or Vertex AI Pipelines.
"""

from __future__ import annotations

import argparse
import sys

from components.cli import HelpFormatter

PROG = "embedopt pipeline"
KFP_HINT = "the pipeline needs Kubeflow Pipelines' SDK: pip install '.[kfp]' (from the repository root)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(formatter_class=HelpFormatter, prog=PROG, description="Compile the Kubeflow (KFP v2) pipeline.")
    sub = parser.add_subparsers(dest="command", required=True)
    compile_ = sub.add_parser(
        "compile", help="write the pipeline IR YAML", formatter_class=HelpFormatter,
        description="Compile the preprocess -> train Kubeflow Pipelines (KFP v2) pipeline to IR YAML, ready to upload "
        "to a KFP instance or run with `kfp run`. Its steps are container components on the project image; "
        "--source synth generates logs inside the pipeline, external imports a file given as the input_uri "
        "parameter. Needs the kfp extra: pip install '.[kfp]'.")
    compile_.add_argument("--output", "-o", default="pipeline.yaml", help="file to write (default: pipeline.yaml)")
    compile_.add_argument("--image", default=None, help="project image the steps run in (default: embedopt:0.1.0)")
    compile_.add_argument("--source", choices=("synth", "external"), default="synth",
                          help="synth: generate logs in the pipeline; external: import a file given as input_uri")
    compile_.add_argument("--gpus", type=int, default=1, help="GPUs for the train step (0 = CPU)")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        from components.pipeline.kfp_pipeline import DEFAULT_IMAGE, compile_pipeline
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] == "kfp":
            print(f"{PROG}: {KFP_HINT}", file=sys.stderr)
            return 2
        raise
    try:
        path = compile_pipeline(args.output, args.image or DEFAULT_IMAGE, args.source, args.gpus)
    except ValueError as err:
        print(f"{PROG} compile: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0
