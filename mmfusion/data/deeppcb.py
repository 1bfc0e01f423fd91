"""DeepPCB (Tang et al., 2019) as train/validation manifests of aligned template/tested pairs with typed boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmfusion.data.manifest import GOOD, read_boxes, write_manifest
from mmfusion.types import InputError

DEEPPCB_TYPES = {"1": "open", "2": "short", "3": "mousebite", "4": "spur", "5": "copper", "6": "pin-hole"}
"""DeepPCB's numeric type codes and the names the manifests (and the pcb-template model) use."""
DEFECT = "defect"


def read_pairs(root: Path) -> list[tuple[Path, Path, Path]]:
    """(tested, template, annotation) paths of every pair listed in `root/trainval.txt`."""
    listing = root / "trainval.txt"
    if not listing.is_file():
        raise InputError(f"{root}: no trainval.txt; expected a DeepPCB folder listing its pairs")
    pairs = []
    for number, text in enumerate(listing.read_text().splitlines(), start=1):
        fields = text.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise InputError(f"{listing}:{number}: expected 'IMAGE ANNOTATION', got {text!r}")
        image, annotation = root / fields[0], root / fields[1]
        tested = image.with_name(f"{image.stem}_test{image.suffix}")
        template = image.with_name(f"{image.stem}_temp{image.suffix}")
        for path in (tested, template, annotation):
            if not path.is_file():
                raise InputError(f"{listing}:{number}: {path} does not exist")
        pairs.append((tested, template, annotation))
    return pairs


def named_boxes(annotation: Path, out: Path) -> Path:
    """Copy a DeepPCB annotation with its type codes replaced by names (`open`, `short`, ...)."""
    lines = []
    for box in read_boxes(annotation):
        if box.type not in DEEPPCB_TYPES:
            raise InputError(f"{annotation}: type {box.type!r} is not a DeepPCB type; expected 1-6")
        lines.append(f"{box.x1:g} {box.y1:g} {box.x2:g} {box.y2:g} {DEEPPCB_TYPES[box.type]}")
    out.write_text("".join(f"{line}\n" for line in lines))
    return out


def split_indices(count: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A deterministic shuffled split of range(count) into (train, validation) index lists, both sorted."""
    if not 0.0 < val_fraction < 1.0:
        raise InputError(f"val_fraction: {val_fraction}; expected a number between 0 and 1")
    order = np.random.default_rng(seed).permutation(count)
    val_count = int(round(count * val_fraction))
    return sorted(order[val_count:].tolist()), sorted(order[:val_count].tolist())


def deeppcb_manifests(root: Path, out_dir: Path, val_fraction: float = 0.2, seed: int = 0) -> dict[str, Path]:
    """Write `train.csv` and `val.csv` (tested image, template as reference, named boxes) under `out_dir`.

    Each row's label is `defect` when its pair has boxes, else `good`; the boxes files (with type names)
    are written to `out_dir/boxes/`. The split is a seeded shuffle of the pairs in trainval.txt order.
    """
    root, out_dir = Path(root), Path(out_dir)
    pairs = read_pairs(root)
    boxes_dir = out_dir / "boxes"
    boxes_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for tested, template, annotation in pairs:
        boxes = named_boxes(annotation, boxes_dir / f"{annotation.stem}.txt")
        label = DEFECT if boxes.read_text().strip() else GOOD
        rows.append({"image": tested, "label": label, "reference": template, "boxes": boxes})
    train, val = split_indices(len(rows), val_fraction, seed)
    return {
        "train": write_manifest(out_dir / "train.csv", [rows[i] for i in train]),
        "val": write_manifest(out_dir / "val.csv", [rows[i] for i in val]),
    }
