"""Fit, calibrate and validate the template detector on DeepPCB: `python -m mmfusion.fitting.deeppcb`.

By default the split leaves whole board designs out (`val`: "unseen boards") and also holds out new pairs of
the designs trained on (`val_seen`: "new pairs of seen boards"); both are measured at the threshold
calibrated on `val`. The split is recorded in the fitted calibration.json (`split`): benchmarks/defects.py
measures on the same held-out pairs, and `--no-fit` on another split notes that its held-out pairs were trained on.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mmfusion.config import ConfigError
from mmfusion.data.deeppcb import SPLIT_FILE, SPLITS, deeppcb_manifests
from mmfusion.data.manifest import Box, ManifestRow, load_manifest
from mmfusion.evaluation.boxes import box_metrics, ranked_matches
from mmfusion.fitting.detection import calibrate_boxes, predicted_boxes
from mmfusion.fitting.registry import FITTERS
from mmfusion.fitting.thresholds import choose_box_threshold
from mmfusion.pipeline import Pipeline
from mmfusion.repository.folder import FITTED_DIR
from mmfusion.security.integrity import MANIFEST_NAME
from mmfusion.types import InputError

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "deeppcb-trainval"
SPLIT_KEYS = ("split", "val_fraction", "seed", "seen_fraction")
UNRECORDED_SPLIT = {"split": "random", "val_fraction": 0.2, "seed": 0}
"""The split of a fitted detector whose calibration.json records none: models/pcb-template's weights were fitted
on the seed-0 random 80/20 split (its README) before splits were recorded."""


def fitted_split(head) -> dict:
    """The deeppcb_manifests arguments (split, val_fraction, seed[, seen_fraction]) the head was fitted with."""
    recorded = (head.calibration or {}).get("split")
    if not isinstance(recorded, dict):
        return dict(UNRECORDED_SPLIT)
    return {k: recorded[k] for k in SPLIT_KEYS if k in recorded}


def run(
    data: Path,
    model: Path,
    work: Path,
    head_name: str,
    val_fraction: float,
    seed: int,
    epochs: int | None,
    fit: bool = True,
    split: str = "group",
    seen_fraction: float = 0.1,
    recalibrate: bool = False,
    training: dict | None = None,
) -> dict:
    """Split DeepPCB, fit the head on the train part, calibrate (best F-score) on `val` and measure on the
    held-out parts: `val` (unseen boards with the group split) and `val_seen` (new pairs of seen boards).

    With fit=False the model's fitted weights are measured as they are and nothing is written; `note` says
    when the split asked for is not the one they were fitted on (their "held-out" pairs were trained on).
    recalibrate=True (with fit=False) writes the threshold chosen on `val` to the fitted calibration.json, e.g.
    after a change to how the head scores (test_flips); only on the split the weights were fitted on.
    """
    if recalibrate and fit:
        raise InputError("recalibrate: true refits nothing; it goes with fit: false (--no-fit)")
    manifests = deeppcb_manifests(data, work, val_fraction, seed, split, seen_fraction)
    record = json.loads((Path(work) / SPLIT_FILE).read_text())
    train, val = load_manifest(manifests["train"]), load_manifest(manifests["val"])
    # torch when fitting (an export of the weights before is stale) and when recalibrating (FP32, as fitted)
    pipeline = Pipeline(model, backend="torch" if fit or recalibrate else None)
    head = pipeline.graph.heads[head_name]
    asked = {k: record[k] for k in SPLIT_KEYS if k in record}
    fitted_on = asked if fit else fitted_split(head)
    if recalibrate and fitted_on != asked:
        flags = " ".join(f"--{key.replace('_', '-')} {value}" for key, value in fitted_on.items())
        raise InputError(
            f"--recalibrate: split {asked}; the weights were fitted on {fitted_on}, and a threshold chosen on "
            f"pairs they were trained on would be optimistic; ask for their own split ({flags})"
        )
    overrides = {**(training or {}), **({} if epochs is None else {"epochs": epochs})}
    if overrides:
        head.params = head.params.model_copy(update={"training": head.params.training.model_copy(update=overrides)})
    fitter = FITTERS.get(pipeline.config.heads[head_name].name)
    fitted = fitter.fit(pipeline, head_name, train, None) if fit else {"fitted": "as shipped"}
    candidates, images_per_second = _candidates(pipeline, head_name, val)
    truth = [row.read_boxes() for row in val]
    calibration = calibrate_boxes(head, candidates, truth, "f1", 0.05)
    result = {
        "split": record,
        "fit": fitted,
        "calibration": calibration,
        "val": {
            "set": record["sets"]["val"],
            **_figures(head, candidates, truth, images_per_second),
            "cross_calibrated": cross_calibrated(candidates, truth, head.params.iou_threshold, head.params.min_score),
        },
    }
    if "val_seen" in manifests:
        seen = load_manifest(manifests["val_seen"])
        candidates, images_per_second = _candidates(pipeline, head_name, seen)
        truth = [row.read_boxes() for row in seen]
        result["val_seen"] = {"set": record["sets"]["val_seen"], **_figures(head, candidates, truth, images_per_second)}
    if fitted_on != asked:
        result["note"] = (
            f"the weights were fitted on split {fitted_on}, not {asked}: pairs held out here were trained on, "
            "so these figures are optimistic"
        )
    if fit:
        head.calibration["split"] = asked
        head.save_fitted(model / FITTED_DIR / head_name)
    elif recalibrate:
        head.save_calibration(model / FITTED_DIR / head_name)  # the split it records is kept (calibrate_boxes)
    if (fit or recalibrate) and (Path(model) / MANIFEST_NAME).is_file():
        result["next"] = (
            f"{FITTED_DIR}/{head_name}/ was rewritten, so {Path(model) / MANIFEST_NAME} no longer matches and the "
            f"folder is refused on load; check the figures, then run `mmfusion manifest write {model}`"
        )
    return result


def _candidates(pipeline: Pipeline, head_name: str, rows: list[ManifestRow]) -> tuple[list[list[Box]], float]:
    """Every candidate box per row (down to the candidate floor) and the pairs per second it took."""
    started = time.perf_counter()
    candidates = predicted_boxes(pipeline, head_name, rows)
    return candidates, len(rows) / (time.perf_counter() - started)


def _figures(head, candidates: list[list[Box]], truth: list[list[Box]], images_per_second: float) -> dict:
    """Precision, recall and F-score at the head's thresholds, mAP over all candidates, per type, speed."""
    kept = [[b for b in boxes if b.score >= head.threshold(b.type)] for boxes in candidates]
    at_threshold, ranked = box_metrics(kept, truth), box_metrics(candidates, truth)
    return {
        "pairs": len(truth),
        "precision": at_threshold["overall"]["precision"],
        "recall": at_threshold["overall"]["recall"],
        "fscore": at_threshold["overall"]["fscore"],
        "map": ranked["map"],
        "images_per_second": images_per_second,
        "threads": torch.get_num_threads(),
        "per_class": {
            kind: {
                **{k: at_threshold["per_class"][kind][k] for k in ("precision", "recall", "fscore")},
                "ap": ranked["per_class"][kind]["ap"],
            }
            for kind in ranked["per_class"]
        },
    }


def cross_calibrated(
    candidates: list[list[Box]], truth: list[list[Box]], iou_threshold: float, min_score: float
) -> dict[str, float]:
    """F-score with each half of the pairs judged at the best-F threshold chosen on the other half (2-fold).

    The calibrated threshold is chosen on the very pairs the headline F-score is measured on; this says how
    much of that figure is the choice of threshold.
    """
    halves = [list(range(0, len(candidates), 2)), list(range(1, len(candidates), 2))]
    kept: list[list[Box]] = [[] for _ in candidates]
    thresholds = []
    for chosen_on, judged in (halves, halves[::-1]):
        scores, hits, positives = ranked_matches(
            [candidates[i] for i in chosen_on], [truth[i] for i in chosen_on], iou_threshold
        )
        threshold, _ = choose_box_threshold(scores, hits, positives, "f1", 0.05, min_score)
        thresholds.append(threshold)
        for i in judged:
            kept[i] = [box for box in candidates[i] if box.score >= threshold]
    overall = box_metrics(kept, truth)["overall"]
    return {
        "precision": overall["precision"],
        "recall": overall["recall"],
        "fscore": overall["fscore"],
        "thresholds": thresholds,
    }


def main(argv: list[str] | None = None) -> None:
    """Command line: fit models/pcb-template on DeepPCB and print the validation figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="DeepPCB folder holding trainval.txt")
    parser.add_argument("--model", type=Path, default=Path("models/pcb-template"), help="model folder to fit")
    parser.add_argument("--work", type=Path, default=Path("out/deeppcb"), help="where the split manifests go")
    parser.add_argument("--head", default="defects", help="the detection head's name in the config")
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default="group",
        help="group: hold out whole board designs (and new pairs of the others); random: shuffle the pairs",
    )
    parser.add_argument("--val-fraction", type=float, default=0.2, help="group: 1 of round(1/F) folds of designs")
    parser.add_argument("--seen-fraction", type=float, default=0.1, help="group: share of pairs held out as val_seen")
    parser.add_argument("--seed", type=int, default=0, help="split seed (group: which fold of designs is held out)")
    parser.add_argument("--epochs", type=int, default=None, help="override the config's training epochs")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a busy machine)")
    parser.add_argument("--device", default=None, help="train on auto (the default) | cpu | cuda | cuda:N")
    parser.add_argument("--workers", type=int, default=None, help="processes cutting training crops ahead (0: none)")
    parser.add_argument("--no-fit", action="store_true", help="measure the fitted weights as they are")
    parser.add_argument(
        "--recalibrate",
        action="store_true",
        help="with --no-fit: write the threshold chosen on val to calibration.json (after e.g. test_flips: true)",
    )
    parser.add_argument("--report", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        result = run(
            args.data,
            args.model,
            args.work,
            args.head,
            args.val_fraction,
            args.seed,
            args.epochs,
            not args.no_fit,
            args.split,
            args.seen_fraction,
            args.recalibrate,
            {k: v for k, v in (("device", args.device), ("workers", args.workers)) if v is not None},
        )
    except (InputError, ConfigError) as error:  # one line, no traceback
        raise SystemExit(f"mmfusion.fitting.deeppcb: {error}") from None
    text = json.dumps(result, indent=2)
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
