"""The detection head's verdict boxes equal "every candidate peak, then the threshold", though it decodes fewer."""

from __future__ import annotations

import numpy as np

from mmfusion.config import HeadSpec
from mmfusion.heads.detection.head import DetectionHead, DetectionParams

TYPES = ["open", "short", "spur"]


def _head(thresholds: dict[str, float]) -> DetectionHead:
    spec = HeadSpec(name="detection", labels=TYPES, threshold=0.4, thresholds=thresholds)
    return DetectionHead(DetectionParams(stride=8, width=8, max_boxes=1000), 4, spec)


def _outputs(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    heat = rng.random((2, len(TYPES), 24, 32)).astype(np.float32) ** 2 * 0.35  # many peaks, all below the thresholds
    heat[:, :, ::6, ::9] = rng.uniform(0.3, 0.99, heat[:, :, ::6, ::9].shape)  # and some crowded strong ones
    geometry = rng.normal(0.5, 0.6, (2, 4, 24, 32)).astype(np.float32)  # boxes of ~1-3 cells: they overlap
    return {"heatmap": heat, "geometry": geometry}


def test_postprocess_keeps_exactly_the_thresholded_candidates():
    for seed in range(5):
        head = _head({"short": 0.6})
        outputs = _outputs(seed)
        every = head.detect(outputs, min_score=head.params.min_score)  # all peaks from the candidate floor
        expected = [[b.to_dict() for b in boxes if b.score >= head.threshold(b.type)] for boxes in every]
        got = [result["boxes"] for result in head.postprocess(outputs)]
        assert got == expected
        assert sum(len(boxes) for boxes in every) > 3 * sum(len(boxes) for boxes in got)  # the floor mattered
        assert any(got)  # and boxes were kept, of more than one type
        assert len({box["label"] for boxes in got for box in boxes}) > 1
