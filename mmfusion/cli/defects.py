"""`mmfusion fit | calibrate | eval`: fit learning heads on manifests, re-choose thresholds, evaluate with a report."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from mmfusion.fitting.thresholds import RULES
from mmfusion.types import InputError

HEADLINE_KEYS = (
    "image_auroc",
    "pixel_auroc",
    "f1",
    "false_detection_rate",
    "miss_rate",
    "precision",
    "recall",
    "fscore",
    "map",
    "images_per_second",
)


def _plain(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null, numpy numbers become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


MAP_KEYS = ("anomaly_map", "heatmap")


def describe_maps(result: dict[str, Any], image: Path, overlay_path: str | None) -> None:
    """Replace map arrays in a prediction dict by a short description; write the first as an overlay PNG if asked."""
    import numpy as np

    from mmfusion.heads.patchcore.localisation import write_overlay
    from mmfusion.media import decode_image

    written = False
    for head in result["outputs"].values():
        for key in MAP_KEYS:
            if not isinstance(head.get(key), np.ndarray):
                continue
            anomaly_map = head[key]
            if overlay_path and not written:
                write_overlay(overlay_path, decode_image(image), anomaly_map, head.get("boxes", []))
                written = True
            height, width = anomaly_map.shape
            head[key] = f"<{width}x{height} map, max {float(anomaly_map.max()):.3f}>"
    if overlay_path and not written:
        raise InputError(f"--overlay: {result['model']} gives no anomaly map to draw")


def _print_summaries(title: str, summaries: dict[str, dict[str, float]]) -> None:
    for head, numbers in summaries.items():
        print(f"{title} head {head}:")
        for key, value in numbers.items():
            print(f"  {key:28s} {_number(value)}")


def _cmd_fit(args: argparse.Namespace) -> int:
    from mmfusion.fitting.model import fit_model

    summaries = fit_model(args.model, args.train, args.out, args.val, args.rule, args.target_fdr)
    _print_summaries("fitted", summaries)
    print(f"fitted model folder: {args.out}" + ("" if args.val else " (thresholds from good training parts only)"))
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from mmfusion.fitting.model import calibrate_model

    _print_summaries("calibrated", calibrate_model(args.folder, args.val, args.rule, args.target_fdr))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from mmfusion.evaluation.anomaly import evaluate
    from mmfusion.evaluation.report import write_report

    summary, scored = evaluate(args.folder, args.test, args.type_map)
    if args.report:
        summary["report"] = str(write_report(args.report, summary, scored))
    if args.json:
        print(json.dumps(_plain(summary)))
        return 0
    print(f"{summary['model']} on {summary['test']} ({summary['images']} images), head {summary['head']}:")
    for key in HEADLINE_KEYS:
        if key in summary:
            print(f"  {key:22s} {_number(summary[key])}")
    for label, numbers in summary["per_class"].items():
        print(f"  class {label:16s} " + ", ".join(f"{k} {_number(v)}" for k, v in numbers.items()))
    if "report" in summary:
        print(f"report: {summary['report']}")
    return 0


def _calibration_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rule", choices=RULES, default="f1", help="threshold by best F1, or by a target false-detection rate"
    )
    parser.add_argument(
        "--target-fdr",
        type=float,
        default=0.01,
        help="with --rule fdr: the largest share of good validation parts that may be flagged (default 0.01)",
    )


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register this area's subcommands on the `mmfusion` parser."""
    fit = sub.add_parser("fit", help="fit a model's learning heads on a train manifest into a new model folder")
    fit.add_argument("model", help="model name in models/ or a model folder")
    fit.add_argument("--train", required=True, help="train manifest CSV (image,label[,mask][,reference][,boxes])")
    fit.add_argument("--val", help="validation manifest CSV: thresholds are chosen on it")
    fit.add_argument("--out", required=True, help="new folder for the fitted model")
    _calibration_flags(fit)
    fit.set_defaults(run=_cmd_fit)
    calibrate = sub.add_parser("calibrate", help="re-choose a fitted model's thresholds on a validation manifest")
    calibrate.add_argument("folder", help="fitted model folder")
    calibrate.add_argument("--val", required=True, help="validation manifest CSV")
    _calibration_flags(calibrate)
    calibrate.set_defaults(run=_cmd_calibrate)
    evaluate = sub.add_parser("eval", help="evaluate a fitted model on a test manifest")
    evaluate.add_argument("folder", help="fitted model folder (or a model name)")
    evaluate.add_argument("--test", required=True, help="test manifest CSV")
    evaluate.add_argument("--report", help="folder for report.html (curves, confusion matrix, worst misses)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    evaluate.add_argument(
        "--type-map",
        help="box type ids in the boxes files -> the model's box types: 'deeppcb' (1 open, 2 short, 3 mousebite, "
        "4 spur, 5 copper, 6 pin-hole), a YAML/JSON file of 'ID: NAME' lines, or 1=open,2=short,... "
        "(default: TEST.types.yaml beside the manifest, when present)",
    )
    evaluate.set_defaults(run=_cmd_eval)
