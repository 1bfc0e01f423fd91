"""box_metrics under DeepPCB's protocol: same type, IoU > 0.33, one match per true box, AP by score rank."""

from __future__ import annotations

import math

import pytest

from mmfusion.data.manifest import Box
from mmfusion.evaluation.boxes import average_precision, box_metrics, iou, ranked_matches


def box(x1, y1, x2, y2, kind="open", score=1.0) -> Box:
    return Box(x1, y1, x2, y2, kind, score)


def test_perfect_predictions_score_one():
    truth = [[box(0, 0, 10, 10), box(20, 20, 40, 30, "short")], [box(5, 5, 15, 25, "spur")]]
    metrics = box_metrics(truth, truth)
    assert metrics["overall"]["precision"] == metrics["overall"]["recall"] == metrics["overall"]["fscore"] == 1.0
    assert metrics["map"] == 1.0
    assert set(metrics["per_class"]) == {"open", "short", "spur"}
    assert all(figures["ap"] == 1.0 for figures in metrics["per_class"].values())


def test_type_mismatch_is_a_false_positive_and_a_miss():
    metrics = box_metrics([[box(0, 0, 10, 10, "short")]], [[box(0, 0, 10, 10, "open")]])
    assert metrics["overall"]["precision"] == 0.0 and metrics["overall"]["recall"] == 0.0
    assert metrics["per_class"]["open"]["recall"] == 0.0 and metrics["per_class"]["open"]["ap"] == 0.0
    assert metrics["per_class"]["short"]["precision"] == 0.0
    assert math.isnan(metrics["per_class"]["short"]["ap"])  # no true shorts: no AP, and not in the mean
    assert metrics["map"] == 0.0


@pytest.mark.parametrize(("width", "correct"), [(3.2, False), (3.4, True)])
def test_iou_just_below_and_above_the_threshold(width, correct):
    truth = box(0, 0, 10, 10)
    predicted = box(0, 0, width, 10)  # IoU = width / 10
    assert iou(predicted, truth) == pytest.approx(width / 10)
    metrics = box_metrics([[predicted]], [[truth]])
    assert metrics["overall"]["recall"] == (1.0 if correct else 0.0)


def test_iou_exactly_at_the_threshold_is_not_enough():
    metrics = box_metrics([[box(0, 0, 3.3, 10)]], [[box(0, 0, 10, 10)]], iou_threshold=0.33)
    assert metrics["overall"]["fscore"] == 0.0


def test_duplicates_count_as_false_positives():
    truth = [[box(0, 0, 10, 10)]]
    predicted = [[box(0, 0, 10, 10, score=0.9), box(1, 0, 10, 10, score=0.8), box(0, 1, 10, 10, score=0.7)]]
    metrics = box_metrics(predicted, truth)
    assert metrics["overall"]["recall"] == 1.0
    assert metrics["overall"]["precision"] == pytest.approx(1 / 3)
    assert metrics["overall"]["ap"] == 1.0  # the duplicates rank below the hit


def test_ap_rewards_ranking_hits_above_false_positives():
    truth = [[box(0, 0, 10, 10), box(50, 50, 60, 60)]]
    good_order = [[box(0, 0, 10, 10, score=0.9), box(50, 50, 60, 60, score=0.8), box(100, 100, 110, 110, score=0.1)]]
    bad_order = [[box(0, 0, 10, 10, score=0.2), box(50, 50, 60, 60, score=0.1), box(100, 100, 110, 110, score=0.9)]]
    good, bad = box_metrics(good_order, truth), box_metrics(bad_order, truth)
    assert good["overall"]["fscore"] == bad["overall"]["fscore"]  # same boxes, same counts
    assert good["map"] == 1.0
    assert bad["map"] == pytest.approx(2 / 3)  # best precision at recall >= 0.5 and at recall 1 is 2/3


def test_average_precision_all_point_interpolation():
    # hits at ranks 1 and 3 of 3, two positives: envelope precision 1 at recall 0.5, 2/3 at recall 1
    assert average_precision([0.9, 0.8, 0.7], [True, False, True], 2) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert average_precision([], [], 3) == 0.0


def test_higher_scores_claim_the_true_box_first():
    truth = [[box(0, 0, 10, 10)]]
    predicted = [[box(2, 0, 10, 10, score=0.3), box(0, 0, 10, 10, score=0.9)]]
    scores, hits, positives = ranked_matches(predicted, truth)
    assert scores.tolist() == [0.9, 0.3] and hits.tolist() == [True, False] and positives == 1


def test_image_counts_must_agree():
    with pytest.raises(ValueError, match="2 predicted images but 1"):
        box_metrics([[], []], [[]])


def test_cross_calibrated_fscore_judges_each_half_at_the_other_halfs_threshold():
    from mmfusion.fitting.deeppcb import cross_calibrated

    truth, candidates = [], []
    for index in range(6):
        truth.append([Box(10, 10, 30, 30, "open")])
        hit = Box(11, 11, 30, 30, "open", score=0.9)
        # even images (first half): a confident false box above the hit; odd images: a weak one
        false = Box(60, 60, 80, 80, "short", score=0.95 if index % 2 == 0 else 0.2)
        candidates.append([hit, false])
    crossed = cross_calibrated(candidates, truth, iou_threshold=0.33, min_score=0.05)
    # both halves' best-F thresholds keep their hits (0.9) and drop the odd half's weak false boxes
    assert all(0.2 < threshold <= 0.9 for threshold in crossed["thresholds"])
    # so the even half's 0.95 false boxes pass, and the odd half's 0.2 ones do not
    assert crossed["recall"] == pytest.approx(1.0)
    assert crossed["precision"] == pytest.approx(6 / 9)
    assert crossed["fscore"] == pytest.approx(2 * (6 / 9) / (1 + 6 / 9))
