"""Manifest loading: every bad row reported with its line number, paths relative to the manifest."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from mmfusion.data.manifest import ManifestError, load_manifest, read_boxes, read_type_map, write_manifest
from mmfusion.types import InputError


def image(path, size=(32, 24), value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((size[1], size[0], 3), value, np.uint8))
    return path


def test_round_trip_with_relative_paths(tmp_path):
    good = image(tmp_path / "img" / "good.png")
    bad = image(tmp_path / "img" / "bad.png", value=30)
    mask = image(tmp_path / "img" / "bad_mask.png", value=255)
    boxes = tmp_path / "img" / "bad.txt"
    boxes.write_text("1 2 10 12 scratch\n\n3,4,5,6 spot\n")
    manifest = write_manifest(
        tmp_path / "sets" / "train.csv",
        [{"image": good, "label": "good"}, {"image": bad, "label": "scratch", "mask": mask, "boxes": boxes}],
    )
    assert "../img/good.png" in manifest.read_text()
    rows = load_manifest(manifest)
    assert [(r.line, r.label, r.is_good) for r in rows] == [(2, "good", True), (3, "scratch", False)]
    assert rows[0].mask is None and rows[1].mask == mask.resolve()
    assert rows[1].read_image().shape == (24, 32, 3) and rows[1].read_mask().all()
    assert [(b.x1, b.y2, b.type) for b in rows[1].read_boxes()] == [(1, 12, "scratch"), (3, 6, "spot")]


def test_every_bad_row_is_reported_with_its_line(tmp_path):
    image(tmp_path / "ok.png")
    image(tmp_path / "small_mask.png", size=(8, 8))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "manifest.csv").write_text(
        "image,label,mask\n"
        "ok.png,good,\n"
        "missing.png,good,\n"
        "broken.png,scratch,\n"
        "ok.png,scratch,small_mask.png\n"
        "ok.png,,\n"
    )
    with pytest.raises(ManifestError) as error:
        load_manifest(tmp_path / "manifest.csv")
    message = str(error.value)
    assert "4 bad row(s)" in message
    assert "line 3: image: 'missing.png' does not exist" in message
    assert "line 4: image: 'broken.png' is not a readable image" in message
    assert "line 5: mask: size 8x8 differs from the image's 32x24" in message
    assert "line 6: label: empty" in message
    assert "line 2" not in message


def test_header_problems_name_the_columns(tmp_path):
    (tmp_path / "a.csv").write_text("path,label\nx.png,good\n")
    with pytest.raises(ManifestError, match="missing column"):
        load_manifest(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("image,label,colour\nx.png,good,red\n")
    with pytest.raises(ManifestError, match="unknown column.*colour"):
        load_manifest(tmp_path / "b.csv")
    (tmp_path / "c.csv").write_text("image,label\n")
    with pytest.raises(ManifestError, match="no rows"):
        load_manifest(tmp_path / "c.csv")
    with pytest.raises(ManifestError, match="does not exist"):
        load_manifest(tmp_path / "nope.csv")


def test_bad_boxes_file_names_its_line(tmp_path):
    path = tmp_path / "boxes.txt"
    path.write_text("1 2 3 4 open\n5 6 7 spur\n")
    with pytest.raises(InputError, match=r"boxes.txt:2: expected 'x1 y1 x2 y2 type'"):
        read_boxes(path)
    path.write_text("5 6 2 9 open\n")
    with pytest.raises(InputError, match="x1 < x2"):
        read_boxes(path)


def deeppcb_ids_manifest(tmp_path):
    """A manifest whose boxes file uses DeepPCB's type ids, comma- and space-separated."""
    part = image(tmp_path / "part.png", size=(64, 48))
    boxes = tmp_path / "part.txt"
    boxes.write_text("1,2,10,12,1\n\n20 20 30 30 6\n")
    return write_manifest(tmp_path / "test.csv", [{"image": part, "label": "defect", "boxes": boxes}])


def test_a_type_map_names_deeppcb_type_ids(tmp_path):
    manifest = deeppcb_ids_manifest(tmp_path)
    assert [b.type for b in load_manifest(manifest)[0].read_boxes()] == ["1", "6"]  # as written, without a map
    for spec in ("deeppcb", "1=open,6=pin-hole", {1: "open", 6: "pin-hole"}):
        (row,) = load_manifest(manifest, spec)
        assert [(b.type, b.line) for b in row.read_boxes()] == [("open", 1), ("pin-hole", 3)]
    (tmp_path / "map.yaml").write_text("1: open\n6: pin-hole\n")
    assert [b.type for b in load_manifest(manifest, tmp_path / "map.yaml")[0].read_boxes()] == ["open", "pin-hole"]
    (tmp_path / "test.types.yaml").write_text('{"1": "open", "6": "pin-hole"}\n')  # the manifest's own, JSON
    assert [b.type for b in load_manifest(manifest)[0].read_boxes()] == ["open", "pin-hole"]


def test_an_unknown_type_id_names_the_file_line_value_and_what_was_expected(tmp_path):
    manifest = deeppcb_ids_manifest(tmp_path)
    (tmp_path / "part.txt").write_text("1 2 10 12 1\n20 20 30 30 9\n")
    with pytest.raises(ManifestError) as error:
        load_manifest(manifest, "deeppcb")
    message = str(error.value)
    assert "line 2: boxes: " in message
    assert "part.txt:2: type '9' is not in the type map 'deeppcb'; expected one of 1, 2, 3, 4, 5, 6" in message


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("pcb", r"not a built-in map \(deeppcb\), an existing YAML/JSON file, or ID=NAME pairs"),
        ("1=open,short", "'short' is not ID=NAME"),
        ({}, "expected a mapping of box type ids to names"),
        ({"1": ""}, "id '1' maps to ''; expected a type name"),
    ],
)
def test_bad_type_maps_say_what_was_expected(spec, message):
    with pytest.raises(InputError, match=message):
        read_type_map(spec)


def test_a_type_map_file_that_is_not_a_mapping_is_refused(tmp_path):
    (tmp_path / "map.yaml").write_text("- open\n- short\n")
    with pytest.raises(InputError, match=r"map.yaml: got \['open', 'short'\]; expected a mapping"):
        read_type_map(tmp_path / "map.yaml")
