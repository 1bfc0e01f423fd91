"""`backend: auto` on CPUs with int8 dot products: a static INT8 image graph, used where it agrees and is faster.

The model folder's `calibration/` images (real images, signed by its manifest) are the check. INT8 ranges come from
every other one; the INT8 graph must then give the verdict FP32 torch gives on every one of them and on the images
of the heads' labelled examples (held out, like the other half), and run the image graph at least MIN_SPEEDUP times
as fast as the FP32 export on this CPU. The INT8
export sits beside the cached FP32 one (`<fingerprint>/onnx-int8/`: the image graph INT8, the other groups' FP32
graphs linked in), sealed with its sha256 manifest; its export.json keeps the check (`calibration.check`), so the
decision is measured once per CPU and the file changes that would alter it change the fingerprint.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmfusion.config import ConfigError, RuntimeSpec
from mmfusion.graph import PipelineGraph, input_name
from mmfusion.heads.detection.decode import box_iou
from mmfusion.media import decode_image
from mmfusion.repository.folder import CALIBRATION_DIR
from mmfusion.runtime.exported import (
    ExportedGraph,
    ExportInfo,
    exporter_versions,
    publish,
    read_export,
    seal,
    staging_dir,
)
from mmfusion.runtime.parity import compare_outputs
from mmfusion.runtime.quantize import (
    CALIBRATION_BATCH,
    FIDELITY_TARGET,
    cpu_int8_dot_product,
    max_fp32_layers,
    quantize_static_prefix,
)
from mmfusion.security.integrity import read_model_file, sha256_file
from mmfusion.types import Modality

"""Real images in the model folder that INT8 is calibrated and checked on."""
REFERENCES_DIR = "references"
"""For models that read (image, reference) pairs: calibration/references/<name> is calibration/<name>'s reference."""
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MIN_IMAGES = 8
"""Fewer calibration images than this: no verdict check worth the name, so no INT8."""
MIN_SPEEDUP = 1.1
"""INT8 must run the image graph this much faster than FP32 here (a margin over the noise of a shared machine)."""
SPEED_BATCH = 8
SPEED_ROUNDS = 3
SPEED_SECONDS = 0.5
PRECISION_ENV = "MMFUSION_AUTO_PRECISION"
"""`fp32` keeps `backend: auto` on FP32 (as `runtime: {precision: fp32}` does); `auto` or unset: choose."""
INT8_DIR = "onnx-int8"
BOX_IOU = 0.5
MIN_BOX_AGREEMENT = 0.95
"""Heads that draw boxes: INT8 must draw this share of the FP32 boxes, and few others (F-score, same type, IoU 0.5).
A single box flipping near its threshold is not a changed verdict; pcb-template's all-INT8 detector drew 0.995 of
them on its calibration pairs and scored within 0.002 F of FP32 on 200 held-out DeepPCB pairs (docs/runtimes.md)."""
RECIPE = 3
"""How the INT8 export is made and checked; an export recorded under another recipe is made again.
2: boxes compared (`MIN_BOX_AGREEMENT`), more first layers FP32 while decisions differ, dense heads, pair models;
3: dense heads' output layers FP32 (`quantize.output_layers`)."""
IMAGE_GROUP = Modality.IMAGE.value
LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Int8Decision:
    """The INT8 export to run (None: stay on FP32), why (as `mmfusion describe` prints it) and its verified info."""

    folder: Path | None
    note: str
    info: ExportInfo | None = None


def forced_fp32(runtime: RuntimeSpec) -> str | None:
    """What forces FP32 (the runtime block's precision or $MMFUSION_AUTO_PRECISION), None when nothing does."""
    if runtime.precision == "fp32":
        return "runtime precision: fp32"
    value = os.environ.get(PRECISION_ENV, "").strip().lower()
    if value not in ("", "auto", "fp32"):
        raise ConfigError(f"{PRECISION_ENV}={value!r}: expected fp32 (force FP32) or auto (choose)")
    return f"{PRECISION_ENV}=fp32" if value == "fp32" else None


def calibration_images(model_dir: Path) -> list[Path]:
    """The images under the model folder's calibration/, sorted by name."""
    folder = Path(model_dir) / CALIBRATION_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def calibration_references(model_dir: Path, images: list[Path]) -> list[Path]:
    """calibration/references/<name> for each calibration image; ConfigError naming the first one missing."""
    folder = Path(model_dir) / CALIBRATION_DIR / REFERENCES_DIR
    references = [folder / image.name for image in images]
    missing = [path for path in references if not path.is_file()]
    if missing:
        raise ConfigError(
            f"{CALIBRATION_DIR}/{REFERENCES_DIR}/{missing[0].name}: missing; the model reads (image, reference) "
            f"pairs, so every {CALIBRATION_DIR}/ image needs its reference of the same name there"
        )
    return references


def example_images(graph: PipelineGraph) -> list[Path]:
    """The image files the heads' labelled examples name (never calibrated on: held out for the check)."""
    paths: list[Path] = []
    for head in graph.heads.values():
        for example in getattr(head.params, "examples", None) or []:
            image = getattr(example, "image", None)
            if image is not None and Path(image) not in paths:
                paths.append(Path(image))
    return paths


def _verdict(result: dict[str, Any]) -> Any:
    """A head result's decision: its label, or its set of flags; None for heads that decide nothing."""
    if "label" in result:
        return result["label"]
    if "flags" in result:
        return tuple(sorted(result["flags"]))
    return None


def _scores(result: dict[str, Any]) -> dict[str, float]:
    scores = result.get("scores")
    if isinstance(scores, dict):
        return {str(k): float(v) for k, v in scores.items()}
    score = result.get("score")
    return {"score": float(score)} if isinstance(score, (int, float)) else {}


def _matched_boxes(expected: list[dict[str, Any]], got: list[dict[str, Any]]) -> int:
    """Boxes of `got` matched one to one with boxes of `expected` of the same type at IoU >= BOX_IOU (greedy, best
    overlap first). The detection head's own numpy IoU: the edge image, which builds INT8 exports too, has no
    torchvision."""
    if not expected or not got:
        return 0
    second = np.array([[b["x1"], b["y1"], b["x2"], b["y2"]] for b in got], np.float64)  # (G, 4)
    overlap = np.stack([box_iou(np.array([b["x1"], b["y1"], b["x2"], b["y2"]], np.float64), second) for b in expected])
    overlap[np.array([[e["label"] != g["label"] for g in got] for e in expected])] = 0.0  # (E, G) IoU, same type
    matched = 0
    while overlap.max() >= BOX_IOU:
        row, col = np.unravel_index(overlap.argmax(), overlap.shape)
        overlap[row, :], overlap[:, col] = 0.0, 0.0
        matched += 1
    return matched


def verdict_agreement(reference: list[dict[str, Any]], candidate: list[dict[str, Any]]) -> dict[str, Any]:
    """How many items get every head's verdict the reference gives, the largest score difference, the verdicts seen,
    and for heads that draw boxes the share of boxes both draw (F-score of the candidate's boxes against the
    reference's: same type, IoU >= BOX_IOU; 1.0 when neither draws any)."""
    agreeing, largest, verdicts = 0, 0.0, 0
    boxes = {"reference": 0, "candidate": 0, "matched": 0}
    for expected, got in zip(reference, candidate, strict=True):
        same = True
        for head, result in expected.items():
            verdict = _verdict(result)
            if verdict is None:
                continue
            verdicts += 1
            same = same and verdict == _verdict(got[head])
            theirs = _scores(got[head])
            for key, value in _scores(result).items():
                largest = max(largest, abs(value - theirs.get(key, value)))
            if "boxes" in result:
                boxes["reference"] += len(result["boxes"])
                boxes["candidate"] += len(got[head].get("boxes", []))
                boxes["matched"] += _matched_boxes(result["boxes"], got[head].get("boxes", []))
        agreeing += same
    drawn = boxes["reference"] + boxes["candidate"]
    return {
        "images": len(reference),
        "agreeing": agreeing,
        "verdicts": verdicts,
        "max_score_difference": largest,
        "boxes": boxes,
        "box_agreement": 2 * boxes["matched"] / drawn if drawn else 1.0,
    }


def image_inputs(
    graph: PipelineGraph, images: list[Path], references: list[Path] | None = None
) -> tuple[dict[str, np.ndarray], list[tuple[int, int]]]:
    """The image graph's inputs for `images` (with their `references`, for pair models; read through the folder's
    manifest check) and their sizes."""

    def read(path: Path) -> np.ndarray:
        return decode_image(read_model_file(path), f"{path.parent.name}/{path.name}")

    decoded = [read(path) for path in images]
    items = decoded if references is None else list(zip(decoded, map(read, references), strict=True))
    arrays = graph.encoders[IMAGE_GROUP].preprocess(items)
    return {input_name(Modality.IMAGE, k): v for k, v in arrays.items()}, [image.shape[:2] for image in decoded]


def _torch_outputs(graph: PipelineGraph, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        outputs = graph({name: torch.from_numpy(array) for name, array in feed.items()})
    return {name: value.numpy() for name, value in outputs.items()}


def _session(path: Path, runtime: RuntimeSpec):
    import onnxruntime as ort

    from mmfusion.runtime.onnx_backend import session_options

    return ort.InferenceSession(str(path), session_options(runtime), providers=["CPUExecutionProvider"])


def _onnx_outputs(path: Path, feed: dict[str, np.ndarray], runtime: RuntimeSpec) -> dict[str, np.ndarray]:
    session = _session(path, runtime)
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, feed)))


def measure_speed(fp32: Path, int8: Path, feed: dict[str, np.ndarray], runtime: RuntimeSpec) -> dict[str, float]:
    """Images/s of the FP32 and INT8 image graphs at batch SPEED_BATCH: the best of interleaved rounds each."""
    rows = np.resize(np.arange(len(next(iter(feed.values())))), SPEED_BATCH)
    batch = {name: np.ascontiguousarray(array[rows]) for name, array in feed.items()}
    sessions = {"fp32": _session(fp32, runtime), "int8": _session(int8, runtime)}
    best = dict.fromkeys(sessions, 0.0)
    for _ in range(SPEED_ROUNDS):
        for kind, session in sessions.items():
            session.run(None, batch)  # warm-up
            done, started = 0, time.perf_counter()
            while time.perf_counter() - started < SPEED_SECONDS:
                session.run(None, batch)
                done += SPEED_BATCH
            best[kind] = max(best[kind], done / (time.perf_counter() - started))
    return {"batch": SPEED_BATCH, "fp32_images_per_s": best["fp32"], "int8_images_per_s": best["int8"]}


def _link(source: Path, target: Path) -> None:
    """A hard link (the FP32 graphs are shared with the FP32 export), a copy where links are not possible."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _check_note(check: dict[str, Any]) -> tuple[bool, str]:
    """Whether the check lets INT8 run, and the sentence that says why."""
    agreement, speed = check["agreement"], check["speed"]
    ratio = speed["int8_images_per_s"] / max(speed["fp32_images_per_s"], 1e-9)
    cpu = ", ".join(check["cpu_int8_dot_product"])
    agrees = (
        f"verdicts agree with FP32 torch on {agreement['agreeing']}/{agreement['images']} images ({CALIBRATION_DIR}/ "
        f"and examples; {check['held_out']} held out of the ranges), max score diff "
        f"{agreement['max_score_difference']:.3f}"
    )
    outputs = len(check.get("fp32_output_layers", []))
    faster = (
        f"image graph {ratio:.2f}x FP32 ({speed['int8_images_per_s']:.0f} vs {speed['fp32_images_per_s']:.0f} "
        f"images/s at batch {speed['batch']}), first {len(check['fp32_layers'])} of {check['weight_layers']} "
        f"weight layers{f', the {outputs} output layers' if outputs else ''} and the tail after the last "
        "convolution kept FP32"
    )
    if agreement["verdicts"] == 0:
        return False, f"int8 not used: CPU has {cpu}, but no head gives a verdict to check INT8 against"
    if agreement["agreeing"] < agreement["images"]:
        differing = agreement["images"] - agreement["agreeing"]
        return False, (
            f"int8 not used: CPU has {cpu}, but INT8 verdicts differ from FP32 torch on {differing} of "
            f"{agreement['images']} images ({CALIBRATION_DIR}/ and examples; max score diff "
            f"{agreement['max_score_difference']:.3f})"
        )
    box_agreement = agreement.get("box_agreement", 1.0)
    if box_agreement < MIN_BOX_AGREEMENT:
        return False, (
            f"int8 not used: CPU has {cpu}, but INT8 draws other boxes than FP32 torch (box agreement "
            f"{box_agreement:.3f} on {agreement['images']} images, needs {MIN_BOX_AGREEMENT})"
        )
    if agreement.get("boxes", {}).get("reference"):
        agrees += f", box agreement {box_agreement:.3f}"
    if ratio < MIN_SPEEDUP:
        return False, f"int8 not used: CPU has {cpu} and {agrees}, but {faster} (needs {MIN_SPEEDUP}x)"
    return True, f"CPU has {cpu}; {agrees}; {faster}"


def calibration_batches(feed: dict[str, np.ndarray], items: int) -> list[dict[str, np.ndarray]]:
    """The INT8 ranges' batches: every other one of the first `items` rows of `feed` (the others stay held out)."""
    ranges = {name: array[:items:2] for name, array in feed.items()}
    return [
        {name: array[start : start + CALIBRATION_BATCH] for name, array in ranges.items()}
        for start in range(0, (items + 1) // 2, CALIBRATION_BATCH)
    ]


def build_int8_export(
    name: str,
    graph: PipelineGraph,
    fp32_folder: Path,
    fp32: ExportInfo,
    images: list[Path],
    destination: Path,
    runtime: RuntimeSpec,
    references: list[Path] | None = None,
) -> dict[str, Any]:
    """Quantise the FP32 export's image graph on `images`, check it, write the export with its check; the check.

    Ranges come from every other calibration image; the check runs on all of them and the examples' images
    (pair models, given `references`: on the calibration pairs only, examples name no reference).
    """
    staging = staging_dir(destination)
    try:
        examples = [] if references is not None else [p for p in example_images(graph) if p not in images]
        feed, sizes = image_inputs(graph, images + examples, references)
        batches = calibration_batches(feed, len(images))
        if IMAGE_GROUP not in fp32.graphs:
            raise ConfigError(f"the FP32 export has no {IMAGE_GROUP} graph (groups {', '.join(fp32.graphs)})")
        image = fp32.graphs[IMAGE_GROUP]
        reference = _torch_outputs(graph, feed)
        expected = graph.postprocess(reference, sizes)
        kept, dense = 0, all(head.dense_outputs for head in graph.heads.values())
        target = None if dense else FIDELITY_TARGET  # dense maps: judged by the decisions below alone
        while True:  # few first layers in FP32 with which every verdict and box agrees (1, 2, 3, 5, 8 ... more)
            mixed = quantize_static_prefix(
                fp32_folder / image.file, staging / image.file, batches, kept, target, fp32_outputs=dense
            )
            quantized = _onnx_outputs(staging / image.file, feed, runtime)
            agreement = verdict_agreement(expected, graph.postprocess(quantized, sizes))
            kept, most = len(mixed["fp32_layers"]), max_fp32_layers(mixed["weight_layers"])
            if agreement["agreeing"] == agreement["images"] and agreement["box_agreement"] == 1.0 or kept >= most:
                break
            kept = min(most, kept + max(1, kept // 2))
        check = {
            "recipe": RECIPE,
            "cpu_int8_dot_product": cpu_int8_dot_product(),
            "held_out": len(images) + len(examples) - len(images[::2]),
            "fp32_layers": mixed["fp32_layers"],
            "weight_layers": mixed["weight_layers"],
            "fp32_tail_nodes": mixed["fp32_tail_nodes"],
            "fp32_output_layers": mixed["fp32_output_layers"],
            "output_cosine": mixed["output_cosine"],
            "agreement": agreement,
            "speed": measure_speed(fp32_folder / image.file, staging / image.file, feed, runtime),
        }
        check["use"], check["note"] = _check_note(check)
        graphs = {}
        for group, exported in fp32.graphs.items():
            if group != IMAGE_GROUP:
                _link(fp32_folder / exported.file, staging / exported.file)
                graphs[group] = exported
                continue
            parity = compare_outputs(reference, quantized)
            parity["calibration_output_cosine"] = mixed["output_cosine"]
            parity["int8_only_calibration_output_cosine"] = mixed["int8_only_output_cosine"]
            graphs[group] = ExportedGraph(
                group, image.file, image.inputs, image.outputs, "static-qdq", parity,
                weight_bits=mixed["weight_bits"], fp32_layers=mixed["fp32_layers"],
            )  # fmt: skip
        calibration = {
            "folder": CALIBRATION_DIR,
            "items": len(images),
            "examples": len(examples),
            "sha256": {path.name: sha256_file(path) for path in images},
            "check": check,
        }
        info = ExportInfo(
            model=name, version=fp32.version, kind="onnx", precision="int8", batch_sizes=fp32.batch_sizes,
            graphs=graphs, calibration=calibration, exporter=exporter_versions(), opset=fp32.opset,
        )  # fmt: skip
        seal(staging, info)
        publish(staging, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    LOG.info("%s: INT8 export %s: %s", name, destination, check["note"])
    return check


def _recorded(folder: Path, dot_product: list[str]) -> ExportInfo | None:
    """A verified INT8 export that records its check, made by this recipe on a CPU with these instructions."""
    if not folder.is_dir():
        return None
    try:
        info = read_export(folder)
    except ConfigError as error:
        LOG.warning("cached INT8 export refused, rebuilding it: %s", error)
        return None
    check = (info.calibration or {}).get("check")
    current = check and check.get("recipe") == RECIPE and check.get("cpu_int8_dot_product") == dot_product
    return info if current else None


def int8_decision(
    model_dir: Path,
    runtime: RuntimeSpec,
    graph: PipelineGraph,
    name: str,
    fp32_folder: Path,
    fp32: Callable[[], ExportInfo],
) -> Int8Decision:
    """INT8 where the CPU has int8 dot products, the model ships calibration images and the check passes.

    `fp32` gives the verified FP32 export in `fp32_folder` (building it if need be); asked for only to build INT8.
    """
    forced = forced_fp32(runtime)
    if forced:
        return Int8Decision(None, f"int8 not used: {forced}")
    dot_product = cpu_int8_dot_product()
    if not dot_product:
        return Int8Decision(None, "int8 not used: this CPU has no VNNI/AMX int8 dot products")
    cpu = ", ".join(dot_product)
    encoder = graph.encoders[IMAGE_GROUP] if IMAGE_GROUP in graph.encoders else None
    if encoder is None:
        return Int8Decision(None, f"int8 not used: CPU has {cpu}, but the model has no image graph to quantise")
    images = calibration_images(model_dir)
    if len(images) < MIN_IMAGES:
        return Int8Decision(
            None,
            f"int8 not used: CPU has {cpu}, but the model folder has {len(images)} images under {CALIBRATION_DIR}/ "
            f"(at least {MIN_IMAGES} real images are needed to check INT8 verdicts against FP32)",
        )
    folder = fp32_folder.parent / INT8_DIR
    info = _recorded(folder, dot_product)
    if info is None:
        try:
            references = calibration_references(model_dir, images) if encoder.uses_reference else None
            build_int8_export(name, graph, fp32_folder, fp32(), images, folder, runtime, references)
            info = read_export(folder)
        except Exception as error:  # noqa: BLE001 - INT8 is an optimisation: FP32 stays when it cannot be had
            LOG.warning("%s: INT8 export failed, staying on FP32: %s", name, error)
            return Int8Decision(None, f"int8 not used: building it failed ({type(error).__name__}: {error})")
    check = info.calibration["check"]
    return Int8Decision(folder, check["note"], info) if check["use"] else Int8Decision(None, check["note"])
