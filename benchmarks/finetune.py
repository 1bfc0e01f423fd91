"""Fine-tuning benchmark on the synthetic defect-type task: full vs LoRA r=16, and a distilled student vs its teacher.

Data: parts from mmfusion.data.synthetic.make_part (good, scratch, spot, crack), written as PNG tables.
Models: EfficientNet-Lite0 with its embedded ImageNet weights (LoRA on its 1x1 projection convolutions,
the family's adapter targets), identity fusion, a cosine classification head. The distillation
student is the same network at half the input side (a quarter of the pixels: 64 vs 128 px by default),
trained on the full-FT teacher's soft targets and features. Baselines are measured in the same run:
LoRA against full fine-tuning, the student against its teacher. Targets: LoRA within 1 point of
full accuracy with <= 10% trainable parameters; student >= 3x the teacher's images/s at <= 2 points
accuracy loss.

    .venv/bin/python benchmarks/finetune.py [--image-size 128] [--student-size 64] [--epochs 6] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from mmfusion.data.synthetic import DEFECT_TYPES, make_part  # noqa: E402
from mmfusion.pipeline import Pipeline  # noqa: E402
from mmfusion.training.distill import DistillOptions, distill, measure  # noqa: E402
from mmfusion.training.engine import TaskModel, load_examples  # noqa: E402
from mmfusion.training.finetune import finetune  # noqa: E402
from mmfusion.training.options import TrainOptions  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "finetune.json"
LABELS = ["good", *DEFECT_TYPES]


def write_split(folder: Path, name: str, per_class: int, size: int, rng: np.random.Generator) -> Path:
    """A table of per_class parts of every label (image,label), PNGs beside it."""
    import cv2

    lines = ["image,label"]
    for label in LABELS:
        for index in range(per_class):
            image, _, _ = make_part(rng, size, None if label == "good" else label)
            path = folder / name / f"{label}_{index:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            lines.append(f"{name}/{path.name},{label}")
    table = folder / f"{name}.csv"
    table.write_text("\n".join(lines) + "\n")
    return table


def write_model(folder: Path, image_size: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "name": folder.name,
        "version": 1,
        "encoders": {"image": {"name": "image.efficientnet_lite0", "params": {"image_size": image_size}}},
        "fusion": {"name": "identity"},
        "heads": {"defect_type": {"name": "classification", "labels": LABELS, "params": {"scale": 20.0}}},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder


def evaluate(model: Path, version: int, test: Path, batch_size: int) -> dict[str, float]:
    pipeline = Pipeline(model, backend="torch", version=version)
    examples = load_examples(test, pipeline, LABELS)
    return measure(TaskModel(pipeline.graph, "defect_type"), examples, batch_size, torch.device("cpu"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=128, help="teacher / fine-tuning input side")
    parser.add_argument("--student-size", type=int, default=64, help="student input side (a multiple of 16)")
    parser.add_argument("--part-size", type=int, default=128, help="side of the generated part images")
    parser.add_argument("--train-per-class", type=int, default=16)
    parser.add_argument("--val-per-class", type=int, default=8)
    parser.add_argument("--test-per-class", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--distill-epochs", type=int, default=15, help="the student starts further away")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="finetune-bench-") as scratch:
        root = Path(scratch)
        rng = np.random.default_rng(args.seed)
        tables = {
            name: write_split(root / "data", name, count, args.part_size, rng)
            for name, count in (
                ("train", args.train_per_class),
                ("val", args.val_per_class),
                ("test", args.test_per_class),
            )
        }
        base = write_model(root / "models" / "defects", args.image_size)
        student = write_model(root / "models" / "defects-small", args.student_size)
        runs = {}
        for method, lr in (("full", 3e-4), ("lora", 1e-3)):
            options = TrainOptions(
                train=tables["train"],
                val=tables["val"],
                out=root / "runs" / method,
                method=method,
                rank=16,
                epochs=args.epochs,
                batch_size=args.batch_size,
                lr=lr,
                seed=args.seed,
                device="cpu",
                progress=False,
            )
            clock = time.perf_counter()
            result = finetune(str(base), options)
            scores = evaluate(base, result.version, tables["test"], args.batch_size)
            runs[method] = {
                "version": result.version,
                "trainable_parameters": result.trainable,
                "total_parameters": result.total,
                "trainable_share": result.trainable / result.total,
                "train_seconds": time.perf_counter() - clock,
                "epochs_run": len(result.history.epochs),
                **scores,
            }
        clock = time.perf_counter()
        distilled = distill(
            f"{base}@{runs['full']['version']}",
            str(student),
            DistillOptions(
                data=tables["train"],
                val=tables["val"],
                out=root / "runs" / "distill",
                epochs=args.distill_epochs,
                batch_size=args.batch_size,
                lr=3e-4,
                patience=4,
                seed=args.seed,
                device="cpu",
                progress=False,
            ),
            say=lambda *_: None,
        )
        distill_seconds = time.perf_counter() - clock
        teacher = evaluate(base, runs["full"]["version"], tables["test"], args.batch_size)
        pupil = evaluate(student, distilled.version, tables["test"], args.batch_size)
    report(args, runs, teacher, pupil, distill_seconds, time.perf_counter() - started)


def report(args, runs: dict, teacher: dict, pupil: dict, distill_seconds: float, seconds: float) -> None:
    full, lora = runs["full"], runs["lora"]
    speedup = pupil["images_per_second"] / teacher["images_per_second"]
    checks = {
        "lora_within_1_point": 100 * (full["accuracy"] - lora["accuracy"]) <= 1.0,
        "lora_share_at_most_10_percent": lora["trainable_share"] <= 0.10,
        "student_at_least_3x_faster": speedup >= 3.0,
        "student_within_2_points": 100 * (teacher["accuracy"] - pupil["accuracy"]) <= 2.0,
    }
    print(f"synthetic defect types {LABELS}: {args.test_per_class} test parts per class, input {args.image_size}px")
    print(f"{'run':<28}{'accuracy':>10}{'trainable':>12}{'share':>8}{'images/s':>10}{'train s':>9}")
    for name, run in (("full fine-tuning", full), ("LoRA r=16", lora)):
        print(
            f"{name:<28}{run['accuracy']:>10.3f}{run['trainable_parameters']:>12,}{run['trainable_share']:>8.1%}"
            f"{run['images_per_second']:>10.1f}{run['train_seconds']:>9.1f}"
        )
    teacher_name, student_name = f"teacher (full, {args.image_size}px)", f"student (distilled, {args.student_size}px)"
    print(f"{teacher_name:<28}{teacher['accuracy']:>10.3f}{'':>20}{teacher['images_per_second']:>10.1f}")
    print(
        f"{student_name:<28}{pupil['accuracy']:>10.3f}{'':>20}"
        f"{pupil['images_per_second']:>10.1f}{distill_seconds:>9.1f}"
    )
    print(
        f"LoRA - full: {100 * (lora['accuracy'] - full['accuracy']):+.1f} points; student - teacher: "
        f"{100 * (pupil['accuracy'] - teacher['accuracy']):+.1f} points at {speedup:.2f}x images/s"
    )
    for name, ok in checks.items():
        print(f"  {'PASS' if ok else 'MISS'}  {name}")
    print(f"total {seconds:.0f} s")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "settings": vars(args),
                "full": full,
                "lora": lora,
                "teacher": teacher,
                "student": pupil,
                "student_speedup": speedup,
                "distill_seconds": distill_seconds,
                "checks": checks,
                "seconds": seconds,
                "torch_threads": torch.get_num_threads(),
            },
            indent=2,
        )
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
