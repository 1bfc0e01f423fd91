"""Thresholds chosen on validation scores (best F1 or a target false-detection rate) and score normalisation."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from sklearn.metrics import precision_recall_curve

from mmfusion.config import ConfigError
from mmfusion.types import InputError

CALIBRATION_FILE = "calibration.json"
RULES = ("f1", "fdr")


def fdr_threshold(good_scores: np.ndarray, target_fdr: float) -> float:
    """The lowest threshold (defect when score >= threshold) that flags at most `target_fdr` of the good scores."""
    if not 0.0 <= target_fdr < 1.0:
        raise InputError(f"target_fdr: {target_fdr}; expected a rate in [0, 1)")
    ordered = np.sort(np.asarray(good_scores, np.float64))[::-1]  # descending
    if ordered.size == 0:
        raise InputError("validation manifest has no good rows; a false-detection rate needs good parts")
    allowed = int(np.floor(target_fdr * ordered.size + 1e-9))  # good parts that may be flagged
    if allowed >= ordered.size:
        return float(ordered[-1])
    return float(np.nextafter(ordered[allowed], np.inf))


def best_f1_threshold(scores: np.ndarray, is_defect: np.ndarray) -> tuple[float, float]:
    """(threshold, F1) maximising F1 of `score >= threshold`; the threshold sits midway to the next lower score."""
    scores = np.asarray(scores, np.float64)
    is_defect = np.asarray(is_defect, bool)
    if is_defect.all() or not is_defect.any():
        raise InputError("validation manifest needs both good and defective rows to choose a threshold by best F1")
    precision, recall, thresholds = precision_recall_curve(is_defect, scores)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    best = int(np.argmax(f1))
    threshold = float(thresholds[best])
    below = scores[scores < threshold]
    if below.size:
        threshold = float((threshold + below.max()) / 2)
    return threshold, float(f1[best])


def choose_threshold(scores: np.ndarray, is_defect: np.ndarray, rule: str, target_fdr: float) -> float:
    """A threshold by `rule`: 'f1' (best F1) or 'fdr' (at most `target_fdr` of the good scores flagged)."""
    if rule == "f1":
        return best_f1_threshold(scores, is_defect)[0]
    if rule == "fdr":
        return fdr_threshold(np.asarray(scores)[~np.asarray(is_defect, bool)], target_fdr)
    raise InputError(f"rule: {rule!r}; expected one of {', '.join(RULES)}")


@dataclass(frozen=True)
class Calibration:
    """Raw-score thresholds and the levels that normalise scores so that 0 = typical good part, 0.5 = threshold."""

    image_threshold: float
    image_good_level: float
    pixel_threshold: float
    pixel_good_level: float
    rule: str = "fdr"
    target_fdr: float = 0.01
    source: str = "validation"
    counts: dict[str, int] = field(default_factory=dict)

    @staticmethod
    def _normalise(raw: np.ndarray | float, threshold: float, good_level: float) -> np.ndarray:
        spread = max(threshold - good_level, 1e-6)
        return np.maximum(0.5 + (np.asarray(raw, np.float32) - threshold) / (2 * spread), 0.0)

    def image_score(self, raw: float) -> float:
        """A raw image score normalised to [0, 1]: 0.5 is the threshold."""
        return float(np.clip(self._normalise(raw, self.image_threshold, self.image_good_level), 0.0, 1.0))

    def pixel_map(self, raw_map: np.ndarray) -> np.ndarray:
        """A raw anomaly map normalised: 0 = typical good pixel, 0.5 = the pixel threshold (not capped above)."""
        return self._normalise(raw_map, self.pixel_threshold, self.pixel_good_level).astype(np.float32)

    def save(self, folder: Path) -> Path:
        path = Path(folder) / CALIBRATION_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: Path) -> Calibration:
        """Read calibration.json; ConfigError naming the file when it is missing or malformed."""
        path = Path(folder) / CALIBRATION_FILE
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as error:
            raise ConfigError(f"{path}: not a readable calibration ({error}); run mmfusion calibrate") from None


def calibrate_scores(
    image_scores: np.ndarray,
    is_defect: np.ndarray,
    pixel_scores: np.ndarray | None,
    pixel_truth: np.ndarray | None,
    rule: str,
    target_fdr: float,
    source: str = "validation",
) -> Calibration:
    """Choose the image threshold by `rule`; the pixel threshold by best pixel F1 when masks exist, else alike."""
    image_scores = np.asarray(image_scores, np.float64)
    is_defect = np.asarray(is_defect, bool)
    good = image_scores[~is_defect]
    if good.size == 0:
        raise InputError("validation manifest has no good rows; normalisation needs good parts")
    image_threshold = choose_threshold(image_scores, is_defect, rule, target_fdr)
    image_good_level = float(np.median(good))
    if pixel_scores is not None and pixel_truth is not None and pixel_truth.any() and not pixel_truth.all():
        # never above the image threshold: the image score is the map's peak, so a flagged part always has a region
        pixel_threshold = min(best_f1_threshold(pixel_scores, pixel_truth)[0], image_threshold)
        pixel_good_level = float(np.median(pixel_scores[~pixel_truth]))
    else:
        # no pixel ground truth: flag pixels at the image threshold, normalised by the good parts' median
        pixel_threshold, pixel_good_level = image_threshold, image_good_level
    counts = {"good": int((~is_defect).sum()), "defective": int(is_defect.sum())}
    return Calibration(
        image_threshold=float(image_threshold),
        image_good_level=image_good_level,
        pixel_threshold=float(pixel_threshold),
        pixel_good_level=pixel_good_level,
        rule=rule,
        target_fdr=float(target_fdr),
        source=source,
        counts=counts,
    )
