"""Thresholds by target false-detection rate and by best F1; normalisation puts the threshold at 0.5."""

from __future__ import annotations

import numpy as np
import pytest

from mmfusion.fitting.patchcore import calibrate_scores
from mmfusion.fitting.thresholds import best_f1_threshold, fdr_threshold
from mmfusion.heads.patchcore.calibration import Calibration
from mmfusion.types import InputError


@pytest.mark.parametrize("target, flagged", [(0.0, 0), (0.009, 0), (0.01, 1), (0.05, 5), (0.5, 50)])
def test_fdr_threshold_flags_at_most_the_target_share_of_good_parts(target, flagged):
    good = np.random.default_rng(0).normal(10.0, 2.0, 100)
    threshold = fdr_threshold(good, target)
    assert int((good >= threshold).sum()) == flagged


def test_best_f1_threshold_separates_separable_scores_midway():
    scores = np.array([1.0, 2.0, 3.0, 7.0, 8.0])
    threshold, f1 = best_f1_threshold(scores, np.array([0, 0, 0, 1, 1], bool))
    assert f1 == 1.0 and threshold == 5.0


def test_calibration_normalises_threshold_to_half_and_keeps_regions_for_flagged_parts():
    image_scores = np.array([1.0, 1.2, 0.8, 5.0, 6.0])
    is_defect = np.array([0, 0, 0, 1, 1], bool)
    pixels = np.array([0.1, 0.2, 9.0, 9.5, 0.3])  # best pixel F1 would sit above the image threshold
    truth = np.array([0, 0, 1, 1, 0], bool)
    calibration = calibrate_scores(image_scores, is_defect, pixels, truth, "f1", 0.01)
    assert calibration.image_score(calibration.image_threshold) == pytest.approx(0.5)
    assert calibration.image_score(float(np.median(image_scores[:3]))) == 0.0
    assert calibration.pixel_threshold <= calibration.image_threshold
    assert calibration.pixel_map(np.array([calibration.pixel_threshold]))[0] == pytest.approx(0.5)


def test_calibration_round_trips_through_its_file(tmp_path):
    calibration = Calibration(3.0, 1.0, 2.5, 0.5, rule="fdr", target_fdr=0.05, counts={"good": 4, "defective": 2})
    calibration.save(tmp_path)
    assert Calibration.load(tmp_path) == calibration


def test_rules_refuse_what_they_cannot_use():
    with pytest.raises(InputError, match="both good and defective"):
        best_f1_threshold(np.array([1.0, 2.0]), np.array([0, 0], bool))
    with pytest.raises(InputError, match="target_fdr"):
        fdr_threshold(np.array([1.0]), 1.5)
    with pytest.raises(InputError, match="no good rows"):
        calibrate_scores(np.array([1.0]), np.array([1], bool), None, None, "fdr", 0.1)
