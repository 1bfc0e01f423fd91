"""Report generation targets: schema validity, field accuracy of a trained cross_modal decoder, first-chunk latency.

Writes benchmarks/results/reports.json. Baselines measured in the same run: the majority-class guess for field
accuracy, and a plain Inspect call (same model, same image) for the template generator's first-chunk latency.
Run: .venv/bin/python benchmarks/reports.py [--train 900 --val 200 --epochs 30 --requests 40]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import yaml

from mmfusion.client import InspectionClient
from mmfusion.reports.dataset import load_report_manifest, make_report_suite
from mmfusion.reports.metrics import report_fields, summarise
from mmfusion.reports.report import Report
from mmfusion.reports.train import train_cross_modal
from mmfusion.repository.folder import models_root
from mmfusion.serving import build_server
from mmfusion.templates.schema import load_template

TEMPLATE = "defect_inspection@1"
RESULTS = Path(__file__).resolve().parent / "results" / "reports.json"


def png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()


def report_of(chunks) -> Report:
    """A Report rebuilt from a GenerateReport stream."""
    last = chunks[-1]
    fields = json.loads(last.fields["json"]) if last.fields.get("json") else {}
    problems = () if last.fields.get("schema_valid") == "true" else (last.fields.get("problems", "invalid"),)
    return Report(
        last.fields.get("text", ""), fields, last.fields.get("template", ""), last.fields.get("generator", ""),
        problems, int(last.fields.get("tokens_in", 0)), int(last.fields.get("tokens_out", 0)),
    )  # fmt: skip


def stream(client: InspectionClient, model: str, image: bytes, text: str = "") -> tuple[list, float, float]:
    """(chunks, first-chunk ms, total ms) of one GenerateReport call."""
    started = time.perf_counter()
    first = None
    chunks = []
    for chunk in client.generate_report(model, images=[image], text=text):
        if first is None:
            first = (time.perf_counter() - started) * 1000
        chunks.append(chunk)
    return chunks, first or float("nan"), (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=900)
    parser.add_argument("--val", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--requests", type=int, default=40, help="template-generator requests for latency")
    parser.add_argument("--size", type=int, default=96)
    args = parser.parse_args()
    template = load_template(TEMPLATE)
    with tempfile.TemporaryDirectory() as scratch:
        root, data = Path(scratch) / "models", Path(scratch) / "data"
        folder = root / "report-decoder"
        folder.mkdir(parents=True)
        config = {
            "name": "report-decoder",
            "encoders": {"image": {"name": "image.efficientnet_lite0", "params": {"image_size": args.size}}},
            "fusion": {"name": "identity"},
            "heads": {"report": {"name": "report", "params": {"generator": "cross_modal", "template": TEMPLATE,
                                                              "width": 64, "heads": 4, "max_length": 32}}},
        }  # fmt: skip
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
        train_csv = make_report_suite(data / "train", args.train, template, args.size, seed=0)
        val_csv = make_report_suite(data / "val", args.val, template, args.size, seed=1)
        trained = train_cross_modal(folder, train_csv, epochs=args.epochs, progress=True)
        (root / "defect-report").symlink_to(models_root() / "defect-report")
        rows = load_report_manifest(val_csv)
        with build_server(["report-decoder", "defect-report"], port=0, model_root=root) as server:
            with InspectionClient(f"127.0.0.1:{server.port}", timeout=120) as client:
                client.wait_ready(30)
                decoded, decoder_first, decoder_total = [], [], []
                for row in rows:
                    chunks, first, total = stream(client, "report-decoder", png(row.read_image()))
                    decoded.append(report_of(chunks))
                    decoder_first.append(first)
                    decoder_total.append(total)
                images = [png(row.read_image()) for row in rows[: args.requests]]
                stream(client, "defect-report", images[0], "warm-up")
                templated, template_first, inspect_ms = [], [], []
                for index, image in enumerate(images):
                    chunks, first, _ = stream(client, "defect-report", image, "operator note: a mark on the part")
                    templated.append(report_of(chunks))
                    template_first.append(first)
                    started = time.perf_counter()
                    client.inspect("defect-report", image=image, text=f"operator note: a mark on the part {index}")
                    inspect_ms.append((time.perf_counter() - started) * 1000)
    expected = [row.expected for row in rows]
    decoder = summarise(decoded, expected, [row.report for row in rows], decoder_total)
    majority = {
        key: Counter(e.get(key, "") for e in expected if e.get(key)).most_common(1)[0][0] for key in expected[0]
    }
    baseline = summarise(
        [Report("", {"verdict": "fail", "defects": [{**majority}]}, TEMPLATE, "majority") for _ in rows], expected
    )
    template_summary = {
        "reports": len(templated),
        "schema_validity": float(np.mean([r.valid for r in templated])),
        "first_chunk_p50_ms": float(np.percentile(template_first, 50)),
        "first_chunk_p95_ms": float(np.percentile(template_first, 95)),
        "inspect_p50_ms": float(np.percentile(inspect_ms, 50)),
    }
    results = {
        "cross_modal": {
            **decoder,
            "first_chunk_p50_ms": float(np.percentile(decoder_first, 50)),
            "train_rows": trained.rows,
            "epochs": trained.epochs,
            "train_seconds": trained.seconds,
            "field_accuracy_vs_majority": decoder["field_accuracy"] / baseline["field_accuracy"],
        },
        "majority_baseline": baseline,
        "template": {
            **template_summary,
            "first_chunk_vs_inspect": template_summary["first_chunk_p50_ms"] / template_summary["inspect_p50_ms"],
        },
        "targets": {
            "template_schema_validity_100": template_summary["schema_validity"] == 1.0,
            "cross_modal_schema_validity_99": decoder["schema_validity"] >= 0.99,
            "cross_modal_field_accuracy_90": decoder["field_accuracy"] >= 0.90,
            "template_first_chunk_200ms": template_summary["first_chunk_p50_ms"] <= 200.0,
        },
        "first_defect_sample": [report_fields(r) for r in decoded[:3]],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    print(f"{'metric':<44} {'value':>10}")
    rows_out = [
        ("template: schema validity", template_summary["schema_validity"]),
        ("template: first chunk p50 ms", template_summary["first_chunk_p50_ms"]),
        ("template: first chunk p95 ms", template_summary["first_chunk_p95_ms"]),
        ("baseline: Inspect p50 ms (same model, image)", template_summary["inspect_p50_ms"]),
        ("cross_modal: schema validity", decoder["schema_validity"]),
        ("cross_modal: field accuracy", decoder["field_accuracy"]),
        ("cross_modal: type accuracy", decoder["type_accuracy"]),
        ("cross_modal: location accuracy", decoder["location_accuracy"]),
        ("cross_modal: severity accuracy", decoder["severity_accuracy"]),
        ("baseline: majority field accuracy", baseline["field_accuracy"]),
        ("cross_modal: BLEU-4", decoder["bleu4"]),
        ("cross_modal: ROUGE-L", decoder["rouge_l"]),
        ("cross_modal: METEOR-style", decoder["meteor_style"]),
        ("cross_modal: report p50 ms", decoder["p50_ms"]),
        ("cross_modal: first chunk p50 ms", results["cross_modal"]["first_chunk_p50_ms"]),
        ("cross_modal: tokens out (mean)", decoder["tokens_out"]),
        ("cross_modal: train seconds", trained.seconds),
    ]
    for name, value in rows_out:
        print(f"{name:<44} {value:>10.3f}")
    print("targets:", json.dumps(results["targets"]))
    print(f"written: {RESULTS}")


if __name__ == "__main__":
    main()
