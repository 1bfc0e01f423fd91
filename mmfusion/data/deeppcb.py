"""DeepPCB (Tang et al., 2019) as train/validation manifests of aligned template/tested pairs with typed boxes.

The pairs of one `groupNNNNN` folder are photographs of one board design. The default split holds out
whole board designs ("unseen boards": what a new line's boards look like to the model) and, from the
designs kept for training, a random share of pairs ("new pairs of seen boards"). `split="random"`
shuffles pairs regardless of design, the split the shipped pcb-template model was fitted on.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.model_selection import GroupKFold

from mmfusion.data.manifest import GOOD, TYPE_MAPS, read_boxes, read_type_map, write_manifest
from mmfusion.types import InputError

DEEPPCB_TYPES = TYPE_MAPS["deeppcb"]
"""DeepPCB's numeric type codes and the names the manifests (and the pcb-template model) use."""
DEFECT = "defect"
SPLITS = ("group", "random")
SPLIT_FILE = "split.json"
UNSEEN_BOARDS = "unseen boards"
SEEN_BOARDS = "new pairs of seen boards"


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


def board_design(root: Path, tested: Path) -> str:
    """The board design of a pair: its top folder under the DeepPCB root (`group20085`)."""
    return Path(tested).relative_to(root).parts[0]


def named_boxes(annotation: Path, out: Path) -> Path:
    """Copy a DeepPCB annotation with its type codes replaced by names (`open`, `short`, ...)."""
    boxes = read_boxes(annotation, read_type_map("deeppcb"))
    out.write_text("".join(f"{b.x1:g} {b.y1:g} {b.x2:g} {b.y2:g} {b.type}\n" for b in boxes))
    return out


def split_indices(count: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A deterministic shuffled split of range(count) into (train, validation) index lists, both sorted."""
    _check_fraction("val_fraction", val_fraction)
    order = np.random.default_rng(seed).permutation(count)
    val_count = int(round(count * val_fraction))
    return sorted(order[val_count:].tolist()), sorted(order[:val_count].tolist())


def group_split_indices(groups: list[str], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, validation) indices, sorted, with no group on both sides: one fold of scikit-learn's GroupKFold.

    The groups are dealt into round(1 / val_fraction) folds of about equal size (largest groups first,
    each to the smallest fold); the fold `seed % folds` is held out, so seeds 0 .. folds-1 give every fold
    once (cross-validation by group) and the split depends on nothing but the groups and the seed.
    """
    _check_fraction("val_fraction", val_fraction)
    folds = max(2, round(1 / val_fraction))
    designs = sorted(set(groups))
    if len(designs) < folds:
        raise InputError(
            f"val_fraction {val_fraction:g} holds out 1 of {folds} folds of board designs, but there are only "
            f"{len(designs)} ({', '.join(designs)}); use a larger val_fraction or split='random'"
        )
    splits = list(GroupKFold(n_splits=folds).split(np.zeros(len(groups)), groups=groups))
    train, val = splits[seed % folds]
    return sorted(train.tolist()), sorted(val.tolist())


def _check_fraction(name: str, value: float, allow_zero: bool = False) -> None:
    if not (0.0 <= value < 1.0 if allow_zero else 0.0 < value < 1.0):
        low = "0 (none)" if allow_zero else "0"
        raise InputError(f"{name}: {value}; expected a number from {low} to below 1")


def deeppcb_manifests(
    root: Path,
    out_dir: Path,
    val_fraction: float = 0.2,
    seed: int = 0,
    split: str = "group",
    seen_fraction: float = 0.1,
) -> dict[str, Path]:
    """Write the split manifests (tested image, template as reference, named boxes) under `out_dir`.

    split="group" (default): `val.csv` holds every pair of the held-out board designs (one fold of
    round(1 / val_fraction), see group_split_indices: "unseen boards"); `val_seen.csv` a seeded shuffle's
    `seen_fraction` of all pairs, drawn from the other designs ("new pairs of seen boards"; none with 0);
    `train.csv` the rest. split="random": `train.csv` and `val.csv` from a seeded shuffle of the pairs
    (`val_fraction` of them; their designs are all in training). `split.json` records the parameters, the
    designs on each side and the counts. Each row's label is `defect` when its pair has boxes, else `good`;
    the boxes files (with type names) are written to `out_dir/boxes/`.
    """
    if split not in SPLITS:
        raise InputError(f"split: {split!r}; expected one of {', '.join(SPLITS)}")
    _check_fraction("seen_fraction", seen_fraction, allow_zero=True)
    root, out_dir = Path(root), Path(out_dir)
    pairs = read_pairs(root)
    boxes_dir = out_dir / "boxes"
    boxes_dir.mkdir(parents=True, exist_ok=True)
    rows, designs = [], []
    for tested, template, annotation in pairs:
        boxes = named_boxes(annotation, boxes_dir / f"{annotation.stem}.txt")
        label = DEFECT if boxes.read_text().strip() else GOOD
        rows.append({"image": tested, "label": label, "reference": template, "boxes": boxes})
        designs.append(board_design(root, tested))
    parts: dict[str, list[int]] = {}
    if split == "group":
        train, parts["val"] = group_split_indices(designs, val_fraction, seed)
        if seen_fraction > 0:
            keep, seen = split_indices(len(train), min(seen_fraction * len(rows) / len(train), 0.5), seed)
            train, parts["val_seen"] = [train[i] for i in keep], [train[i] for i in seen]
    else:
        train, parts["val"] = split_indices(len(rows), val_fraction, seed)
    manifests = {"train": write_manifest(out_dir / "train.csv", [rows[i] for i in train])}
    for name, indices in parts.items():
        manifests[name] = write_manifest(out_dir / f"{name}.csv", [rows[i] for i in indices])
    record = {
        "split": split,
        "val_fraction": val_fraction,
        "seed": seed,
        **({"seen_fraction": seen_fraction} if split == "group" else {}),
        "sets": {
            "train": "training",
            "val": UNSEEN_BOARDS if split == "group" else SEEN_BOARDS,
            **({"val_seen": SEEN_BOARDS} if "val_seen" in parts else {}),
        },
        "pairs": {"train": len(train), **{name: len(indices) for name, indices in parts.items()}},
        "designs": {name: sorted({designs[i] for i in indices}) for name, indices in {"train": train, **parts}.items()},
    }
    (out_dir / SPLIT_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return manifests
