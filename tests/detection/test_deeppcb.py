"""DeepPCB manifests: a deterministic, disjoint 80/20 split with named box types (on a DeepPCB-shaped folder)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from mmfusion.data.deeppcb import deeppcb_manifests
from mmfusion.data.manifest import load_manifest
from mmfusion.types import InputError


def fake_deeppcb(root: Path, pairs: int = 20) -> Path:
    """A folder laid out like DeepPCB: groupN/N/<id>_test.jpg, _temp.jpg, groupN/N_not/<id>.txt, trainval.txt."""
    images, notes = root / "group1" / "1", root / "group1" / "1_not"
    images.mkdir(parents=True)
    notes.mkdir(parents=True)
    lines = []
    for index in range(pairs):
        stem = f"1{index:04d}"
        board = np.full((32, 32), 255, np.uint8)
        cv2.imwrite(str(images / f"{stem}_temp.jpg"), board)
        cv2.imwrite(str(images / f"{stem}_test.jpg"), board)
        (notes / f"{stem}.txt").write_text("" if index == 0 else f"1 2 10 12 {index % 6 + 1}\n")
        lines.append(f"group1/1/{stem}.jpg group1/1_not/{stem}.txt")
    (root / "trainval.txt").write_text("\n".join(lines) + "\n")
    return root


def test_split_is_deterministic_disjoint_and_80_20(tmp_path):
    root = fake_deeppcb(tmp_path / "deeppcb")
    first = deeppcb_manifests(root, tmp_path / "a")
    second = deeppcb_manifests(root, tmp_path / "b")
    train, val = load_manifest(first["train"]), load_manifest(first["val"])
    assert (len(train), len(val)) == (16, 4)
    assert {r.image for r in train}.isdisjoint({r.image for r in val})
    assert {r.image for r in train} | {r.image for r in val} == set((root / "group1" / "1").glob("*_test.jpg"))
    again = load_manifest(second["val"])
    assert [r.image for r in again] == [r.image for r in val]
    other_seed = load_manifest(deeppcb_manifests(root, tmp_path / "c", seed=1)["val"])
    assert [r.image for r in other_seed] != [r.image for r in val]


def test_rows_pair_tested_with_template_and_name_the_types(tmp_path):
    root = fake_deeppcb(tmp_path / "deeppcb")
    rows = load_manifest(deeppcb_manifests(root, tmp_path / "out", val_fraction=0.5)["train"]) + load_manifest(
        tmp_path / "out" / "val.csv"
    )
    by_stem = {r.image.name.removesuffix("_test.jpg"): r for r in rows}
    assert by_stem["10000"].label == "good" and by_stem["10000"].read_boxes() == []
    row = by_stem["10003"]
    assert row.label == "defect"
    assert row.reference.name == "10003_temp.jpg"
    (only,) = row.read_boxes()
    assert (only.x1, only.y1, only.x2, only.y2, only.type) == (1, 2, 10, 12, "spur")


def test_missing_listing_and_bad_fraction_are_refused(tmp_path):
    with pytest.raises(InputError, match="no trainval.txt"):
        deeppcb_manifests(tmp_path, tmp_path / "out")
    root = fake_deeppcb(tmp_path / "deeppcb")
    with pytest.raises(InputError, match="val_fraction"):
        deeppcb_manifests(root, tmp_path / "out", val_fraction=1.5)
