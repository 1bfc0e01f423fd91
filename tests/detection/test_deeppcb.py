"""DeepPCB manifests: by default whole board designs held out (plus new pairs of the others), or a random 80/20 split;
deterministic, disjoint, named box types (on a DeepPCB-shaped folder, and on the real one when present)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from mmfusion.data.deeppcb import SEEN_BOARDS, SPLIT_FILE, UNSEEN_BOARDS, deeppcb_manifests
from mmfusion.data.manifest import load_manifest
from mmfusion.types import InputError

DESIGNS = {"group10": 8, "group20": 6, "group30": 5, "group40": 4, "group50": 3, "group60": 2}  # 28 pairs


def fake_deeppcb(root: Path, designs: dict[str, int] | None = None) -> Path:
    """A folder laid out like DeepPCB: groupN/N/<id>_test.jpg, _temp.jpg, groupN/N_not/<id>.txt, trainval.txt."""
    lines = []
    for group, pairs in (designs or DESIGNS).items():
        number = group.removeprefix("group")
        images, notes = root / group / number, root / group / f"{number}_not"
        images.mkdir(parents=True)
        notes.mkdir(parents=True)
        for index in range(pairs):
            stem = f"{number}{index:03d}"
            board = np.full((32, 32), 255, np.uint8)
            cv2.imwrite(str(images / f"{stem}_temp.jpg"), board)
            cv2.imwrite(str(images / f"{stem}_test.jpg"), board)
            (notes / f"{stem}.txt").write_text("" if index == 0 else f"1 2 10 12 {index % 6 + 1}\n")
            lines.append(f"{group}/{number}/{stem}.jpg {group}/{number}_not/{stem}.txt")
    (root / "trainval.txt").write_text("\n".join(lines) + "\n")
    return root


def design_of(row) -> str:
    return row.image.parent.parent.name


def read_split(manifests: dict[str, Path]) -> dict[str, list]:
    return {name: load_manifest(path) for name, path in manifests.items()}


def test_group_split_never_puts_a_board_design_on_both_sides(tmp_path):
    root = fake_deeppcb(tmp_path / "deeppcb")
    parts = read_split(deeppcb_manifests(root, tmp_path / "out"))
    assert set(parts) == {"train", "val", "val_seen"}
    designs = {name: {design_of(r) for r in rows} for name, rows in parts.items()}
    assert designs["val"].isdisjoint(designs["train"]) and designs["val"].isdisjoint(designs["val_seen"])
    assert designs["val_seen"] <= designs["train"]  # new pairs of boards trained on
    images = [r.image for rows in parts.values() for r in rows]
    assert len(images) == len(set(images)) == sum(DESIGNS.values())
    # GroupKFold deals 28 pairs into 5 folds of 8, 6, 5, 4 and 3 + 2; seed 0 holds out the first (group10)
    assert designs["val"] == {"group10"}
    assert {name: len(rows) for name, rows in parts.items()} == {"train": 17, "val": 8, "val_seen": 3}
    record = json.loads((tmp_path / "out" / SPLIT_FILE).read_text())
    assert record["sets"] == {"train": "training", "val": UNSEEN_BOARDS, "val_seen": SEEN_BOARDS}
    assert record["designs"]["val"] == ["group10"] and record["pairs"] == {"train": 17, "val": 8, "val_seen": 3}


def test_group_split_is_deterministic_and_seeds_walk_the_folds(tmp_path):
    root = fake_deeppcb(tmp_path / "deeppcb")
    first = read_split(deeppcb_manifests(root, tmp_path / "a", seed=3))
    again = read_split(deeppcb_manifests(root, tmp_path / "b", seed=3))
    assert {k: [r.image for r in v] for k, v in first.items()} == {k: [r.image for r in v] for k, v in again.items()}
    held_out = [
        {design_of(r) for r in load_manifest(deeppcb_manifests(root, tmp_path / f"s{seed}", seed=seed)["val"])}
        for seed in range(5)
    ]
    assert [len(load_manifest(tmp_path / f"s{seed}" / "val.csv")) for seed in range(5)] == [8, 6, 5, 4, 5]
    assert set().union(*held_out) == set(DESIGNS)  # every design is unseen in exactly one fold
    assert sum(len(designs) for designs in held_out) == len(DESIGNS)


def test_without_seen_pairs_only_train_and_val_are_written(tmp_path):
    root = fake_deeppcb(tmp_path / "deeppcb")
    manifests = deeppcb_manifests(root, tmp_path / "out", seen_fraction=0.0)
    assert set(manifests) == {"train", "val"}
    assert len(load_manifest(manifests["train"])) + len(load_manifest(manifests["val"])) == 28


def test_random_split_is_deterministic_disjoint_and_80_20(tmp_path):
    root = fake_deeppcb(tmp_path / "deeppcb", {"group1": 20})
    first = deeppcb_manifests(root, tmp_path / "a", split="random")
    second = deeppcb_manifests(root, tmp_path / "b", split="random")
    train, val = load_manifest(first["train"]), load_manifest(first["val"])
    assert set(first) == {"train", "val"} and (len(train), len(val)) == (16, 4)
    assert {r.image for r in train}.isdisjoint({r.image for r in val})
    assert {r.image for r in train} | {r.image for r in val} == set((root / "group1" / "1").glob("*_test.jpg"))
    again = load_manifest(second["val"])
    assert [r.image for r in again] == [r.image for r in val]
    other_seed = load_manifest(deeppcb_manifests(root, tmp_path / "c", seed=1, split="random")["val"])
    assert [r.image for r in other_seed] != [r.image for r in val]
    assert json.loads((tmp_path / "a" / SPLIT_FILE).read_text())["sets"]["val"] == SEEN_BOARDS


def test_rows_pair_tested_with_template_and_name_the_types(tmp_path):
    root = fake_deeppcb(tmp_path / "deeppcb", {"group1": 20})
    manifests = deeppcb_manifests(root, tmp_path / "out", val_fraction=0.5, split="random")
    rows = load_manifest(manifests["train"]) + load_manifest(manifests["val"])
    by_stem = {r.image.name.removesuffix("_test.jpg"): r for r in rows}
    assert by_stem["1000"].label == "good" and by_stem["1000"].read_boxes() == []
    row = by_stem["1003"]
    assert row.label == "defect"
    assert row.reference.name == "1003_temp.jpg"
    (only,) = row.read_boxes()
    assert (only.x1, only.y1, only.x2, only.y2, only.type) == (1, 2, 10, 12, "spur")


def test_bad_arguments_and_too_few_designs_are_refused(tmp_path):
    with pytest.raises(InputError, match="no trainval.txt"):
        deeppcb_manifests(tmp_path, tmp_path / "out")
    root = fake_deeppcb(tmp_path / "deeppcb")
    with pytest.raises(InputError, match="val_fraction"):
        deeppcb_manifests(root, tmp_path / "out", val_fraction=1.5)
    with pytest.raises(InputError, match="seen_fraction"):
        deeppcb_manifests(root, tmp_path / "out", seen_fraction=1.0)
    with pytest.raises(InputError, match="split: 'design'; expected one of group, random"):
        deeppcb_manifests(root, tmp_path / "out", split="design")
    with pytest.raises(InputError, match=r"1 of 10 folds of board designs, but there are only 6"):
        deeppcb_manifests(root, tmp_path / "out", val_fraction=0.1)


def test_an_unknown_deeppcb_type_names_the_file_and_line(tmp_path):
    root = fake_deeppcb(tmp_path / "deeppcb")
    (root / "group20" / "20_not" / "20001.txt").write_text("1 2 10 12 3\n1 2 10 12 7\n")
    with pytest.raises(InputError, match=r"20001\.txt:2: type '7' is not in the type map 'deeppcb'; expected one of 1"):
        deeppcb_manifests(root, tmp_path / "out")


def test_real_deeppcb_split_by_board_design(shared_datasets, tmp_path):
    root = shared_datasets / "deeppcb-trainval"
    parts = read_split(deeppcb_manifests(root, tmp_path / "out"))
    designs = {name: {design_of(r) for r in rows} for name, rows in parts.items()}
    assert designs["val"].isdisjoint(designs["train"] | designs["val_seen"])
    assert sum(len(rows) for rows in parts.values()) == 1000
    assert {name: len(rows) for name, rows in parts.items()} == {"train": 609, "val": 291, "val_seen": 100}


def test_the_training_split_is_recorded_kept_by_recalibration_and_assumed_for_the_shipped_weights():
    from mmfusion.data.manifest import Box
    from mmfusion.fitting.deeppcb import UNRECORDED_SPLIT, fitted_split
    from mmfusion.fitting.detection import calibrate_boxes

    head = SimpleNamespace(params=SimpleNamespace(iou_threshold=0.33, min_score=0.05), calibration={})
    assert fitted_split(head) == UNRECORDED_SPLIT == {"split": "random", "val_fraction": 0.2, "seed": 0}
    recorded = {"split": "group", "val_fraction": 0.2, "seed": 1, "seen_fraction": 0.1}
    head.calibration = {"threshold": 0.3, "split": recorded}
    calibrate_boxes(head, [[Box(0, 0, 10, 10, "open", 0.9)]], [[Box(0, 0, 10, 10, "open")]], "f1", 0.05)
    assert head.calibration["split"] == recorded and fitted_split(head) == recorded


def test_measuring_weights_on_a_split_they_were_not_fitted_on_says_so(tmp_path):
    from mmfusion.fitting.deeppcb import run
    from mmfusion.heads.detection.head import WEIGHTS_FILE
    from mmfusion.repository.folder import FITTED_DIR, models_root

    model = models_root() / "pcb-template"
    if not (model / FITTED_DIR / "defects" / WEIGHTS_FILE).is_file():
        pytest.skip(f"{model} has no fitted detector")
    root = fake_deeppcb(tmp_path / "deeppcb")
    result = run(root, model, tmp_path / "work", "defects", 0.2, 0, None, fit=False)
    assert result["val"]["set"] == UNSEEN_BOARDS and result["val"]["pairs"] == 8
    assert result["val_seen"]["set"] == SEEN_BOARDS and result["val_seen"]["pairs"] == 3
    assert "fitted on split {'split': 'random'" in result["note"] and "optimistic" in result["note"]
    same = run(root, model, tmp_path / "again", "defects", 0.2, 0, None, fit=False, split="random")
    assert "note" not in same and "val_seen" not in same


def test_recalibrating_rewrites_only_the_threshold_and_only_on_the_split_the_weights_were_fitted_on(tmp_path):
    import shutil

    from mmfusion.fitting.deeppcb import run
    from mmfusion.heads.detection.head import CALIBRATION_FILE, WEIGHTS_FILE
    from mmfusion.repository.folder import FITTED_DIR, models_root

    shipped = models_root() / "pcb-template"
    if not (shipped / FITTED_DIR / "defects" / WEIGHTS_FILE).is_file():
        pytest.skip(f"{shipped} has no fitted detector")
    model = shutil.copytree(shipped, tmp_path / "pcb-template")
    fitted = model / FITTED_DIR / "defects"
    weights = (fitted / WEIGHTS_FILE).read_bytes()
    before = json.loads((fitted / CALIBRATION_FILE).read_text())
    root = fake_deeppcb(tmp_path / "deeppcb")
    with pytest.raises(InputError, match="the weights were fitted on .*'random'.*ask for their own split") as refused:
        run(root, model, tmp_path / "group", "defects", 0.2, 0, None, fit=False, recalibrate=True)
    assert "(--split random --val-fraction 0.2 --seed 0)" in str(refused.value)  # the flags that would do
    with pytest.raises(InputError, match="goes with fit: false"):
        run(root, model, tmp_path / "fit", "defects", 0.2, 0, None, fit=True, split="random", recalibrate=True)
    assert json.loads((fitted / CALIBRATION_FILE).read_text()) == before  # refused: nothing written
    result = run(root, model, tmp_path / "random", "defects", 0.2, 0, None, fit=False, split="random", recalibrate=True)
    after = json.loads((fitted / CALIBRATION_FILE).read_text())
    assert after["threshold"] == result["calibration"]["threshold"] != before["threshold"]
    assert after["fscore"] == result["calibration"]["fscore"] == result["val"]["fscore"]
    assert after["split"] == before["split"] and after["types"] == before["types"]
    assert (fitted / WEIGHTS_FILE).read_bytes() == weights
    assert result["next"].endswith(f"then run `mmfusion manifest write {model}`")  # its manifest no longer matches


def test_the_command_line_says_in_one_line_that_recalibrating_goes_with_no_fit(tmp_path):
    from mmfusion.fitting.deeppcb import main

    with pytest.raises(SystemExit, match=r"^mmfusion.fitting.deeppcb: recalibrate: true refits nothing.*--no-fit\)$"):
        main(["--recalibrate", "--data", str(tmp_path), "--model", str(tmp_path), "--work", str(tmp_path / "w")])
