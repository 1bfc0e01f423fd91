"""report.html's gallery: captions say "false detection" or "missed" rightly; the heatmap overlay is visible."""

from __future__ import annotations

import base64
import html
import re

import cv2
import numpy as np

from mmfusion.data.manifest import ManifestRow
from mmfusion.evaluation.anomaly import Scored
from mmfusion.evaluation.report import verdict, write_report
from mmfusion.heads.patchcore.localisation import overlay


def scored(tmp_path, name: str, label: str, predicted: str, score: float) -> Scored:
    path = tmp_path / f"{name}.png"
    cv2.imwrite(str(path), np.full((40, 60, 3), 128, np.uint8))
    heat = np.zeros((40, 60), np.float32)
    heat[10:20, 30:45] = 0.9
    return Scored(ManifestRow(2, path, label), predicted, score, heat, [], (40, 60))


def test_captions_name_false_detections_and_misses(tmp_path):
    items = [
        scored(tmp_path, "flagged_good", "good", "defect", 0.9),
        scored(tmp_path, "passed_scratch", "scratch", "good", 0.2),
        scored(tmp_path, "found_scratch", "scratch", "defect", 0.8),
        scored(tmp_path, "passed_good", "good", "good", 0.1),
    ]
    assert [verdict(item) for item in items] == ["false detection", "missed", "correct", "correct"]
    page = html.unescape((write_report(tmp_path / "out", {"model": "m"}, {"anomaly": items})).read_text())
    captions = dict(re.findall(r"<figcaption>(\w+)\.png: (.*?)</figcaption>", page))
    assert captions["flagged_good"].startswith("true good, predicted defect (false detection)")
    assert captions["passed_scratch"].startswith("true scratch, predicted good (missed)")
    assert "(correct)" in captions["found_scratch"] and "(correct)" in captions["passed_good"]
    first = re.search(r'<figure><img src="data:image/png;base64,([^"]+)"', page).group(1)
    thumbnail = cv2.imdecode(np.frombuffer(base64.b64decode(first), np.uint8), cv2.IMREAD_COLOR).astype(int)
    assert thumbnail.shape == (40, 60, 3)
    assert np.abs(thumbnail[12:18, 33:42] - 128).sum(axis=2).min() > 100  # the heatmap shows in the gallery
    assert np.abs(thumbnail[30:, :20] - 128).max() == 0


def test_the_overlay_colours_the_hot_region_and_leaves_the_rest_visible():
    image = np.full((120, 200, 3), 128, np.uint8)
    heat = np.zeros((120, 200), np.float32)
    heat[40:60, 120:150] = 1.0  # a defect well over the threshold (0.5) on a map near 0 elsewhere
    heat = cv2.GaussianBlur(heat, (0, 0), 3)
    picture = overlay(image, heat).astype(int)
    change = np.abs(picture - image).sum(axis=2)  # (H, W)
    assert change[45:55, 125:145].min() > 100  # the hot region is strongly coloured
    assert change[:20, :60].max() == 0  # the part at its usual level is shown as it is
    # a map on another scale (raw distances, peak far above the threshold) is normalised to its own range
    assert np.abs(overlay(image, heat * 40.0).astype(int) - picture).max() <= 1


def test_a_map_below_the_threshold_is_never_drawn_at_full_strength():
    image = np.full((50, 50, 3), 128, np.uint8)
    heat = np.zeros((50, 50), np.float32)
    heat[20:30, 20:30] = 0.2  # below the 0.5 threshold
    faint = np.abs(overlay(image, heat).astype(int) - image).sum(axis=2)[25, 25]
    heat[20:30, 20:30] = 1.0
    strong = np.abs(overlay(image, heat).astype(int) - image).sum(axis=2)[25, 25]
    assert 0 < faint < strong
