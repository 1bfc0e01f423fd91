"""A fitted anomaly head's thresholds and the normalisation they give scores and maps (calibration.json)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mmfusion.config import ConfigError
from mmfusion.security.integrity import IntegrityError, read_model_file

CALIBRATION_FILE = "calibration.json"


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
        """Write calibration.json into `folder`; returns its path."""
        path = Path(folder) / CALIBRATION_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: Path) -> Calibration:
        """Read calibration.json; ConfigError naming the file when it is missing or malformed."""
        path = Path(folder) / CALIBRATION_FILE
        try:
            return cls(**json.loads(read_model_file(path)))
        except IntegrityError:
            raise
        except (OSError, ValueError, TypeError) as error:
            raise ConfigError(f"{path}: not a readable calibration ({error}); run mmfusion calibrate") from None
