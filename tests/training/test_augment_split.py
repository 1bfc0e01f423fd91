"""`data augment` (glossary text, defect-preserving images) and `data split` (stratified, group-preserving)."""

from __future__ import annotations

import random
from collections import Counter

import cv2
import numpy as np
import pytest

from mmfusion.cli.main import main
from mmfusion.data.manifest import load_manifest
from mmfusion.data.table import read_table
from mmfusion.training.glossary import GlossaryError, load_glossary, reorder_clauses, substitute, text_variants
from mmfusion.training.image_augment import GEOMETRIC, transform_array
from mmfusion.training.split import parse_ratios, split_table
from tests.training.helpers import read_rows, stripes, write_image, write_rows

GLOSSARY = """\
# term: [synonyms or expansions]
保理融资: [应收账款保理业务]
数控机床主轴异常: [数控机床主轴故障]
spindle fault: [spindle failure, spindle malfunction]
PLC:            # protected: never split or rewritten
"""


@pytest.fixture
def glossary(tmp_path):
    path = tmp_path / "glossary.yaml"
    path.write_text(GLOSSARY, encoding="utf-8")
    return load_glossary(path)


def test_chinese_substitution_keeps_terms_whole(glossary):
    text, notes = substitute("客户申请保理融资，银行审核合同", glossary, random.Random(0))
    assert text == "客户申请应收账款保理业务，银行审核合同"
    assert notes == ["保理融资->应收账款保理业务"]
    back, _ = substitute(text, glossary, random.Random(0))
    assert back == "客户申请保理融资，银行审核合同"  # synonyms map back to the term
    variants = dict(text_variants("数控机床主轴异常，PLC报警，停机检查", glossary, 5, random.Random(1)))
    assert "数控机床主轴故障，PLC报警，停机检查" in variants
    assert "PLC报警，停机检查，数控机床主轴异常" in variants  # clauses moved, terms untouched
    for variant in variants:
        assert "PLC" in variant and ("数控机床主轴异常" in variant or "数控机床主轴故障" in variant)


def test_english_substitution_respects_word_boundaries(glossary):
    text, notes = substitute("Spindle fault on line 2; spindle faults logged by the PLC", glossary, random.Random(3))
    assert notes and notes[0].startswith("Spindle fault->spindle ")
    assert text.endswith("; spindle faults logged by the PLC")  # 'faults' is another word
    assert reorder_clauses("Spindle fault on line 2, operator stopped the machine.") == (
        "operator stopped the machine, Spindle fault on line 2."
    )
    for variant, how in text_variants("Spindle fault on line 2, PLC alarm raised", glossary, 4, random.Random(0)):
        assert "PLC" in variant and any(
            f in variant.lower() for f in ("spindle fault", "spindle failure", "spindle malfunction")
        )
        assert how


def test_bad_glossary_lists_every_bad_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "保理融资: [应收账款保理业务]\n数控机床主轴异常: {a: b}\n'': [x]\nspindle fault: [保理融资]\n", encoding="utf-8"
    )
    with pytest.raises(GlossaryError) as error:
        load_glossary(path)
    assert str(error.value) == (
        f"{path}: 3 bad glossary entries: line 2: '数控机床主轴异常': expected a list of synonym strings; "
        "line 3: expected a non-empty term; line 4: '保理融资' already appears on line 1"
    )
    path.write_text("- just\n- a list\n")
    with pytest.raises(GlossaryError, match="expected a mapping of term"):
        load_glossary(path)


def test_augment_text_rows_record_their_source(tmp_path, capsys):
    (tmp_path / "g.yaml").write_text(GLOSSARY, encoding="utf-8")
    rows = [
        {"text": "客户申请保理融资，银行审核合同", "label": "contract"},
        {"text": "Spindle fault, line stopped", "label": "fault"},
    ]
    write_rows(tmp_path / "in.csv", rows)
    argv = [
        "data",
        "augment",
        str(tmp_path / "in.csv"),
        "--glossary",
        str(tmp_path / "g.yaml"),
        "--out",
        str(tmp_path / "aug.csv"),
    ]
    assert main(argv + ["--per-row", "2"]) == 0
    out = read_rows(tmp_path / "aug.csv")
    assert [r["source"] for r in out] == ["", "", "2", "2", "3", "3"]
    assert [r["label"] for r in out] == ["contract", "fault", "contract", "contract", "fault", "fault"]
    assert "应收账款保理业务" in out[2]["text"] and out[2]["augmentation"].startswith(
        "glossary:保理融资->应收账款保理业务"
    )
    assert len({r["text"] for r in out}) == 6
    assert "2 rows + 4 new rows" in capsys.readouterr().out
    assert main(argv + ["--per-row", "2"]) == 0 and read_rows(tmp_path / "aug.csv") == out  # deterministic


def test_augment_images_moves_masks_and_boxes_with_the_image(tmp_path):
    image = stripes(0, vertical=True, size=48)[:40]  # 48 wide, 40 high: quarter turns swap the sides
    image[5:9, 30:44] = 255
    mask = np.zeros((40, 48), np.uint8)
    mask[5:9, 30:44] = 255
    write_image(tmp_path / "part.png", image)
    cv2.imwrite(str(tmp_path / "part_mask.png"), mask)
    write_image(tmp_path / "golden.png", stripes(0, vertical=True, size=48)[:40])
    (tmp_path / "part.txt").write_text("30 5 44 9 scratch\n")
    row = {
        "image": "part.png",
        "label": "scratch",
        "mask": "part_mask.png",
        "reference": "golden.png",
        "boxes": "part.txt",
    }
    write_rows(tmp_path / "in.csv", [row])
    assert (
        main(
            ["data", "augment", str(tmp_path / "in.csv"), "--out", str(tmp_path / "out" / "aug.csv"), "--per-row", "5"]
        )
        == 0
    )
    rows = load_manifest(tmp_path / "out" / "aug.csv")  # the image manifest reader accepts the new rows
    assert len(rows) == 6
    names = [r["augmentation"].split("+")[0] for r in read_rows(tmp_path / "out" / "aug.csv")[1:]]
    assert sorted(names) == sorted(GEOMETRIC[1:])
    for manifest_row, name in zip(rows[1:], names):
        new_mask = manifest_row.read_mask()
        np.testing.assert_array_equal(new_mask, transform_array(mask, name) > 0)
        (box,) = manifest_row.read_boxes()
        ys, xs = np.nonzero(new_mask)
        assert (box.x1, box.y1, box.x2, box.y2, box.type) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1, "scratch")
        assert manifest_row.read_image().shape[:2] == new_mask.shape == manifest_row.read_reference().shape[:2]
        defect = manifest_row.read_image()[new_mask].mean()
        assert defect > 200  # the photometric change keeps the scratch bright


def _table(tmp_path, count_per_class: dict[str, int], parts: int | None = None):
    rows, index = [], 0
    for label, count in count_per_class.items():
        for _ in range(count):
            row = {"text": f"row {index}", "label": label}
            if parts:
                row["part"] = f"part{index % parts}"
            rows.append(row)
            index += 1
    return read_table(write_rows(tmp_path / "all.csv", rows))


def test_split_is_stratified_exact_and_deterministic(tmp_path):
    table = _table(tmp_path, {"good": 50, "scratch": 30, "crack": 10})
    splits = split_table(table, parse_ratios("8:1:1"), seed=7)
    counts = {name: Counter(r.label for r in rows) for name, rows in splits.items()}
    assert counts == {
        "train": {"good": 40, "scratch": 24, "crack": 8},
        "val": {"good": 5, "scratch": 3, "crack": 1},
        "test": {"good": 5, "scratch": 3, "crack": 1},
    }
    again = split_table(table, parse_ratios("8:1:1"), seed=7)
    assert {n: [r.line for r in rows] for n, rows in again.items()} == {
        n: [r.line for r in rows] for n, rows in splits.items()
    }
    other = split_table(table, parse_ratios("8:1:1"), seed=8)
    assert [r.line for r in other["val"]] != [r.line for r in splits["val"]]


def test_split_keeps_groups_whole(tmp_path, capsys):
    _table(tmp_path, {"good": 60, "scratch": 40}, parts=25)
    argv = ["data", "split", str(tmp_path / "all.csv"), "--ratios", "8:2", "--group", "part", "--seed", "1"]
    assert main(argv + ["--out-dir", str(tmp_path / "splits")]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split() == ["label", "train", "val", "total"]
    train, val = read_rows(tmp_path / "splits" / "all_train.csv"), read_rows(tmp_path / "splits" / "all_val.csv")
    assert not {r["part"] for r in train} & {r["part"] for r in val}
    assert len(train) + len(val) == 100 and 75 <= len(train) <= 85
    for label, total in (("good", 60), ("scratch", 40)):
        share = sum(r["label"] == label for r in val) / total
        assert 0.1 <= share <= 0.3
        assert f"{label}" in printed


def test_split_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="--ratios '8-1-1'"):
        parse_ratios("8-1-1")
    table = _table(tmp_path, {"good": 4})
    with pytest.raises(ValueError, match="no column 'part'"):
        split_table(table, [0.5, 0.5], group="part")
