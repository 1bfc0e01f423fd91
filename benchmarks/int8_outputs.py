"""INT8 output layers: a model's image graph quantised with its output layers INT8 (recipe 2) and FP32 (recipe 3).

`backend: auto` keeps the output layers of dense heads FP32 since INT8 recipe 3 (`quantize.output_layers`). This
quantises the model's FP32 export both ways on the even calibration items (as `auto` does), then prints a table and
writes JSON: images/s at batch 8 (the graphs run in alternating rounds, best round each; the ratio against recipe 2
is the figure to read, the machines are shared) and, on the odd items (held out of the ranges), the output cosine
against FP32 and the largest difference of each output.
Run: `.venv/bin/python benchmarks/int8_outputs.py [--model models/pcb-template]`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from mmfusion.pipeline import Pipeline
from mmfusion.repository.auto_int8 import (
    CALIBRATION_BATCH,
    IMAGE_GROUP,
    calibration_batches,
    calibration_images,
    calibration_references,
    image_inputs,
)
from mmfusion.repository.export_build import build_export
from mmfusion.runtime.exported import read_export
from mmfusion.runtime.quantize import cpu_int8_dot_product, output_cosine, quantize_static_prefix
from mmfusion.runtime.specs import default_groups
from mmfusion.types import Modality

REPO = Path(__file__).resolve().parent.parent


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(graph: ort.InferenceSession, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return graph.run(None, {spec.name: feed[spec.name] for spec in graph.get_inputs()})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "models" / "pcb-template")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--calls", type=int, default=5, help="calls per round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "int8_outputs.json")
    args = parser.parse_args(argv)
    pipeline = Pipeline(args.model, backend="torch")
    graph, images = pipeline.graph, calibration_images(args.model)
    pairs = graph.encoders[IMAGE_GROUP].uses_reference  # (image, reference) models, as `auto` reads them
    feed, _ = image_inputs(graph, images, calibration_references(args.model, images) if pairs else None)
    batches = calibration_batches(feed, len(images))  # the even items, as `auto` calibrates
    held_out = {name: array[1::2] for name, array in feed.items()}
    timed = {name: array[:CALIBRATION_BATCH] for name, array in feed.items()}
    with tempfile.TemporaryDirectory(prefix="mmfusion-int8-outputs-") as folder:
        work = Path(folder)
        build_export(
            pipeline.name,
            pipeline.version,
            graph,
            default_groups([Modality(key) for key in graph.encoders]),
            work / "fp32",
        )
        fp32 = work / "fp32" / read_export(work / "fp32").graphs[IMAGE_GROUP].file
        paths, checks = {"fp32": fp32}, {}
        for recipe, fp32_outputs in (("recipe 2 (outputs INT8)", False), ("recipe 3 (outputs FP32)", True)):
            paths[recipe] = work / f"{recipe.split()[1]}.onnx"
            checks[recipe] = quantize_static_prefix(fp32, paths[recipe], batches, 0, None, fp32_outputs=fp32_outputs)
        graphs = {key: session(path, args.threads) for key, path in paths.items()}
        reference = [run(graphs["fp32"], held_out)]
        best = dict.fromkeys(graphs, float("inf"))
        for _ in range(args.rounds):
            for key, graph_session in graphs.items():
                run(graph_session, timed)  # warm-up
                started = time.perf_counter()
                for _ in range(args.calls):
                    run(graph_session, timed)
                best[key] = min(best[key], (time.perf_counter() - started) / args.calls)
        names = [spec.name for spec in graphs["fp32"].get_outputs()]
        rows = []
        for key, graph_session in graphs.items():
            outputs = [run(graph_session, held_out)]
            rows.append(
                {
                    "graph": key,
                    "images_per_second": CALIBRATION_BATCH / best[key],
                    "vs_recipe_2": best["recipe 2 (outputs INT8)"] / best[key],
                    "output_cosine": output_cosine(reference, outputs),
                    "max_difference": {
                        n: float(np.abs(o - r).max()) for n, o, r in zip(names, outputs[0], reference[0])
                    },
                    "fp32_output_layers": checks.get(key, {}).get("fp32_output_layers", []),
                }
            )
    dot_product = cpu_int8_dot_product()
    instructions = ", ".join(dot_product) or "none (AVX2 or older)"
    print(f"{args.model.name}: {len(images)} calibration items ({len(images[::2])} calibrate, the rest held out), "
          f"{args.threads} threads, int8 dot-product instructions: {instructions}")  # fmt: skip
    print(f"{'graph':26s} {'images/s':>9s} {'vs recipe 2':>12s} {'cosine':>8s}  largest difference per output")
    for row in rows:
        differences = ", ".join(f"{n} {v:.4f}" for n, v in row["max_difference"].items())
        print(f"{row['graph']:26s} {row['images_per_second']:9.1f} {row['vs_recipe_2']:11.3f}x "
              f"{row['output_cosine']:8.4f}  {differences}")  # fmt: skip
    report = {"model": str(args.model), "threads": args.threads, "cpu_int8_dot_product": dot_product, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
