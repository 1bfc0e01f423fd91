"""`mmfusion` command line: list, describe, predict, demo."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from mmfusion import __version__
from mmfusion.cli.audio import add_commands as add_audio_commands
from mmfusion.cli.cameras import add_commands as add_camera_commands
from mmfusion.cli.data import add_commands as add_data_commands
from mmfusion.cli.defects import add_commands as add_defect_commands
from mmfusion.cli.log_options import add_log_options, logging_for
from mmfusion.cli.prompts import add_commands as add_prompt_commands
from mmfusion.cli.runtime import add_commands as add_runtime_commands
from mmfusion.cli.security import add_commands as add_security_commands
from mmfusion.cli.serve import add_commands as add_serve_commands
from mmfusion.cli.serving import add_commands as add_serving_commands
from mmfusion.config import ConfigError
from mmfusion.types import InputError

EXIT_USAGE = 2


def _cmd_list(args: argparse.Namespace) -> int:
    from mmfusion.parts import load_all
    from mmfusion.registry import BACKENDS, ENCODERS, FUSIONS, HEADS
    from mmfusion.repository.folder import model_folders, models_root

    load_all()
    for title, registry in (("encoders", ENCODERS), ("fusions", FUSIONS), ("heads", HEADS), ("backends", BACKENDS)):
        print(f"{title}:")
        for name in registry.names():
            doc = (registry.get(name).__doc__ or "").strip().splitlines()[0]
            print(f"  {name:28s} {doc}")
    print(f"models ({models_root()}):")
    for name in model_folders():
        print(f"  {name}")
    return 0


def _cmd_describe(args: argparse.Namespace) -> int:
    from mmfusion.repository.folder import read_config, resolve_model_dir

    model_dir = resolve_model_dir(args.model)
    config = read_config(model_dir)
    if args.json:
        print(json.dumps(config.model_dump(mode="json"), indent=2))
        return 0
    print(f"{config.name} (version {config.version}) at {model_dir}")
    if config.description:
        print(f"  {config.description.strip()}")
    for modality, spec in config.encoders.items():
        print(f"  encoder {modality.value:6s} {spec.name} {spec.params or ''}")
    print(f"  fusion         {config.fusion.name} {config.fusion.params or ''}")
    for head_name, spec in config.heads.items():
        labels = f" labels={spec.labels}" if spec.labels else ""
        thresholds = f" thresholds={spec.thresholds}" if spec.thresholds else ""
        print(f"  head {head_name:9s} {spec.name}{labels}{thresholds}")
    _describe_runtime(model_dir, config)
    _describe_serving(config)
    return 0


def _describe_serving(config) -> None:
    """The scheduler settings `serve` gives the model without overriding flags, each with its source."""
    from mmfusion.serving.policy import describe, effective_batching

    batching, sources = effective_batching(config.name, config.serving)
    print(f"  serving        {describe(batching, sources)}")


def _auto_choice(model_dir: Path) -> str:
    """Which backend `auto` settles on for this model and why (loads it: builds the cached export if absent)."""
    from mmfusion.pipeline import Pipeline

    pipeline = Pipeline(model_dir)
    pipeline.close()
    return pipeline.backend_choice


def _describe_runtime(model_dir: Path, config) -> None:
    """The runtime block and every export under versions/ (verified against its sha256 manifest)."""
    from mmfusion.repository.exports import list_exports
    from mmfusion.runtime.exported import folder_size
    from mmfusion.runtime.recheck import recheck_margin

    runtime = config.runtime.model_dump(exclude_defaults=True)
    print(f"  runtime        {config.runtime.backend} {runtime or ''}")
    if config.runtime.backend == "auto":
        print(f"  backend        {_auto_choice(model_dir)}")
    exports = list_exports(model_dir)
    if not exports:
        print(f"  exports        none (make one with `mmfusion export {config.name} --backend onnx`)")
    for folder, info, status in exports:
        where = folder.relative_to(model_dir).as_posix()
        if info is None:
            print(f"  export {where}: REFUSED: {status}")
            continue
        size = folder_size(folder) / 1e6
        margin = recheck_margin(config.runtime, info.precision)
        recheck = f", FP32 re-check within {margin:.0%} of a threshold" if margin else ""
        print(f"  export {where}: {info.precision}, groups {', '.join(info.graphs)}, {size:.1f} MB, {status}{recheck}")
        full = max(info.graphs.values(), key=lambda graph: len(graph.inputs))
        print(f"    inputs  {'; '.join(spec.describe() for spec in full.inputs)}")
        print(f"    outputs {'; '.join(spec.describe() for spec in full.outputs)}")


def _cmd_predict(args: argparse.Namespace) -> int:
    from mmfusion.pipeline import Pipeline
    from mmfusion.types import Inputs

    inputs = Inputs(
        image=Path(args.image) if args.image else None,
        video=args.video,
        audio=Path(args.audio) if args.audio else None,
        text=args.text,
        reference=Path(args.reference) if args.reference else None,
    )
    if not inputs.present():
        raise InputError("predict needs at least one of --image, --video, --audio, --text")
    pipeline = Pipeline(args.model, backend=args.backend)
    if args.audio:
        from mmfusion.cli.audio import predict_call

        if predict_call(pipeline, Path(args.audio), args.json):  # call-centre models: speakers, labels, flags
            return 0
    prediction = pipeline.predict(inputs)
    result = prediction.to_dict()
    if args.image:
        from mmfusion.cli.defects import describe_maps

        describe_maps(result, Path(args.image), args.overlay)  # anomaly maps: summarised; an overlay PNG on request
    for head in result["outputs"].values():
        if "embedding" in head and not args.json:
            head["embedding"] = f"<{len(head['embedding'])} floats>"
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from mmfusion.demo.run import run_demo

    run_demo(args.samples, args.out, service=not args.no_service)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(prog="mmfusion", description="Multimodal inspection and analysis pipelines.")
    parser.add_argument("--version", action="version", version=f"mmfusion {__version__}")
    add_log_options(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="registered parts and models").set_defaults(run=_cmd_list)
    describe = sub.add_parser("describe", help="show a model's pipeline")
    describe.add_argument("model", help="model name in models/ or a model folder")
    describe.add_argument("--json", action="store_true")
    describe.set_defaults(run=_cmd_describe)
    predict = sub.add_parser("predict", help="run a model on files or text")
    predict.add_argument("model", help="model name in models/ or a model folder")
    predict.add_argument("--image", help="image file (PNG, JPEG, ...)")
    predict.add_argument("--reference", help="golden template image the --image is compared with (template models)")
    predict.add_argument("--video", help="video file")
    predict.add_argument("--audio", help="audio file (WAV, FLAC, MP3, ...)")
    predict.add_argument("--text", help="text")
    predict.add_argument(
        "--backend", default=None, help="auto | torch | onnxruntime | tensorrt (default: the model's runtime: block)"
    )
    predict.add_argument("--json", action="store_true", help="one line of JSON")
    predict.add_argument("--overlay", help="PNG file for the image with its anomaly heatmap and boxes")
    predict.set_defaults(run=_cmd_predict)
    demo = sub.add_parser("demo", help="run the embedded models on the sample inputs")
    demo.add_argument(
        "--samples", default=None, help="sample inputs folder (default: $MMFUSION_SAMPLES, else the shipped samples/)"
    )
    demo.add_argument("--out", default="out/demo", help="folder for the annotated stream frames")
    demo.add_argument("--no-service", action="store_true", help="skip the gRPC server part")
    demo.set_defaults(run=_cmd_demo)
    add_serve_commands(sub)
    add_serving_commands(sub)
    add_security_commands(sub)
    add_defect_commands(sub)
    add_runtime_commands(sub)
    add_audio_commands(sub)
    add_prompt_commands(sub)
    add_data_commands(sub)
    add_camera_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; user errors print one line on stderr and exit 2."""
    from mmfusion.client import ServerError

    args = build_parser().parse_args(argv)
    try:
        with logging_for(args):
            return args.run(args)
    except (ConfigError, InputError, ValidationError, ValueError, OSError, ServerError) as error:
        message = " | ".join(line for line in str(error).splitlines() if line.strip())
        print(f"mmfusion: error: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
