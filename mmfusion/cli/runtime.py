"""`mmfusion export`: write a model's graph as ONNX or TensorRT engines under versions/<n>/<backend>/."""

from __future__ import annotations

import argparse


def _cmd_export(args: argparse.Namespace) -> int:
    from mmfusion.exporting import export_model
    from mmfusion.runtime.export import check_export_request
    from mmfusion.runtime.exported import EXPORT_FILE, folder_size, read_export
    from mmfusion.runtime.specs import parse_batch_sizes

    batch_sizes = parse_batch_sizes(args.batch_sizes)
    check_export_request(args.backend, args.precision, args.calibration)
    folder = export_model(
        args.model,
        kind=args.backend,
        precision=args.precision,
        calibration=args.calibration,
        batch_sizes=batch_sizes,
        groups=args.groups,
        version=args.version,
        progress=True,
    )
    info = read_export(folder)
    print(f"{info.model} version {info.version}: {info.kind} {info.precision} -> {folder}")
    for group, graph in info.graphs.items():
        parity = graph.parity
        quantization = f" ({graph.quantization})" if graph.quantization else ""
        print(
            f"  {group:16s} {graph.file}{quantization}: vs torch max relative difference "
            f"{parity['max_relative_difference']:.2e}, min cosine {parity['min_cosine']:.6f}"
        )
    print(f"  {folder_size(folder) / 1e6:.1f} MB of graphs; specs and sha256 manifest in {EXPORT_FILE}, manifest.json")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register `export` on the `mmfusion` parser."""
    export = sub.add_parser("export", help="export a model's graph for onnxruntime or TensorRT")
    export.add_argument("model", help="model name in models/ or a model folder")
    export.add_argument("--backend", default="onnx", help="onnx | tensorrt (default onnx)")
    export.add_argument("--precision", default="fp32", help="fp32 | fp16 | int8 (default fp32)")
    export.add_argument(
        "--calibration",
        default=None,
        help="image manifest CSV for INT8: static QDQ on onnx (dynamic quantisation without it), required on tensorrt",
    )
    export.add_argument(
        "--batch-sizes",
        default="1,8,32",
        help="batch sizes the export is tuned for (TensorRT profiles); default 1,8,32",
    )
    export.add_argument(
        "--groups",
        default=None,
        help="modality groups to export, e.g. image+text,image (default: every subset of up to three modalities)",
    )
    export.add_argument("--version", type=int, default=None, help="a trained version (default: the served one)")
    export.set_defaults(run=_cmd_export)
