"""The FP32 re-check: which margin is in force, and which items count as borderline."""

from __future__ import annotations

import pytest

from mmfusion.config import RuntimeSpec
from mmfusion.runtime.recheck import DEFAULT_INT8_MARGIN, Fp32Recheck, borderline, recheck_margin


class ThresholdHead:
    """A head deciding `score >= 10`: its decision margin is the distance from 10 as a fraction of 10."""

    def decision_margin(self, result):
        return abs(result["score"] - 10.0) / 10.0 if "score" in result else None


class NoThresholdHead:
    def decision_margin(self, result):
        return None


class Graph:
    heads = {"verdict": ThresholdHead(), "embedding": NoThresholdHead()}


@pytest.mark.parametrize(
    ("configured", "precision", "expected"),
    [
        (None, "int8", DEFAULT_INT8_MARGIN),
        (None, "fp16", 0.0),
        (None, "fp32", 0.0),
        (0.1, "fp16", 0.1),
        (0.0, "int8", 0.0),
        (0.1, "fp32", 0.0),  # nothing to re-check an FP32 graph against
    ],
)
def test_margin_in_force(configured, precision, expected):
    assert recheck_margin(RuntimeSpec(backend="onnxruntime", recheck_margin=configured), precision) == expected


def test_borderline_items_are_those_near_any_threshold():
    per_item = [
        {"verdict": {"score": 10.2}, "embedding": {}},  # 2% above
        {"verdict": {"score": 13.0}, "embedding": {}},  # 30% above
        {"verdict": {"score": 9.75}, "embedding": {}},  # 2.5% below
        {"verdict": {}, "embedding": {}},  # no score: never borderline
        {"embedding": {}},
    ]
    assert borderline(Graph(), per_item, 0.03) == [0, 2]
    assert borderline(Graph(), per_item, 0.01) == []
    assert borderline(Graph(), per_item, 0.5) == [0, 1, 2]


def test_no_borderline_item_means_no_fp32_graph_and_results_unchanged():
    recheck = Fp32Recheck(Graph(), RuntimeSpec(backend="onnxruntime"), "int8")
    per_item = [{"verdict": {"score": 20.0}}]

    def postprocess(outputs, items):
        raise AssertionError("nothing is borderline, so nothing is scored again")

    assert recheck(per_item, {}, [object()], postprocess) is per_item
    assert recheck.backend is None and recheck.items == 0
