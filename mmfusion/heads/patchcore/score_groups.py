"""Good parts grouped by texture, so that each group's image scores sit on one scale (e.g. mono / poly solar cells)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmfusion.config import ConfigError
from mmfusion.security.integrity import IntegrityError, read_model_file
from mmfusion.types import InputError

SCORE_GROUPS_FILE = "score_groups.json"
MIN_GROUP_PARTS = 5  # a group's median and 90th percentile need a few parts


def texture(features: np.ndarray | torch.Tensor) -> np.ndarray:
    """(B, D) deviation of each channel of a part's patch features (B, L, D) across its positions: its texture."""
    return torch.as_tensor(np.asarray(features, np.float32)).std(dim=1).numpy()


@dataclass(frozen=True)
class ScoreGroups:
    """K groups of good parts found by k-means on their texture, and each group's good image-score levels.

    `rescale` maps a part's image score to (score - median) / (90th percentile - median) of the good parts of
    the group its texture is nearest to, so that one threshold serves every group.
    """

    centre: np.ndarray  # (D,) texture mean of the good parts
    scale: np.ndarray  # (D,) texture deviation of the good parts
    centroids: np.ndarray  # (K, D) group centres in standardised texture
    medians: np.ndarray  # (K,) median good image score per group
    spreads: np.ndarray  # (K,) 90th percentile minus median per group

    @property
    def groups(self) -> int:
        return len(self.centroids)

    @classmethod
    def fit(cls, textures: np.ndarray, scores: np.ndarray, groups: int, seed: int = 0) -> ScoreGroups:
        """Cluster good parts' textures (N, D) into `groups`; levels from their leave-self-out image scores (N,)."""
        from sklearn.cluster import KMeans  # fitting only: the edge image serves without scikit-learn

        if len(textures) < groups * MIN_GROUP_PARTS:
            raise InputError(
                f"score_groups: {groups} needs at least {groups * MIN_GROUP_PARTS} good parts in the bank, "
                f"got {len(textures)}; fit more good parts or lower score_groups"
            )
        centre, scale = textures.mean(axis=0), textures.std(axis=0) + 1e-6
        kmeans = KMeans(groups, n_init=10, random_state=seed).fit((textures - centre) / scale)
        labels, medians, spreads = kmeans.labels_, [], []
        for group in range(groups):
            members = scores[labels == group]
            if len(members) < MIN_GROUP_PARTS:
                raise InputError(
                    f"score_groups: {groups} found a group of {len(members)} good part(s), fewer than "
                    f"{MIN_GROUP_PARTS}; lower score_groups or fit more parts of that kind"
                )
            median = float(np.median(members))
            medians.append(median)
            spreads.append(max(float(np.quantile(members, 0.9)) - median, 1e-6))
        return cls(centre, scale, kmeans.cluster_centers_.astype(np.float32), np.array(medians), np.array(spreads))

    def assign(self, textures: np.ndarray) -> np.ndarray:
        """(B,) the group whose centre is nearest each texture (B, D)."""
        standardised = (np.asarray(textures, np.float64) - self.centre) / self.scale  # (B, D)
        distances = ((standardised[:, None, :] - self.centroids[None]) ** 2).sum(axis=2)  # (B, K)
        return distances.argmin(axis=1)

    def levels(self, textures: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B,) medians and (B,) spreads of the groups the textures (B, D) belong to."""
        group = self.assign(textures)
        return self.medians[group], self.spreads[group]

    def rescale(self, textures: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """Image scores (B,) on their group's scale: 0 = the group's median good part, 1 = its 90th percentile."""
        medians, spreads = self.levels(textures)
        return (np.asarray(scores, np.float64) - medians) / spreads

    def save(self, folder: Path) -> None:
        """Write score_groups.json into `folder`."""
        fields = {name: np.asarray(getattr(self, name)).tolist() for name in self.__dataclass_fields__}
        (Path(folder) / SCORE_GROUPS_FILE).write_text(json.dumps(fields) + "\n")

    @classmethod
    def load(cls, folder: Path, groups: int, dim: int) -> ScoreGroups:
        """Read what `save` wrote; ConfigError naming the file when it is missing or does not fit the config."""
        path = Path(folder) / SCORE_GROUPS_FILE
        try:
            fields = json.loads(read_model_file(path))
            loaded = cls(**{name: np.asarray(fields[name], np.float64) for name in cls.__dataclass_fields__})
        except IntegrityError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ConfigError(f"{path}: not readable score groups ({error}); refit the model") from None
        if loaded.centroids.shape != (groups, dim):
            raise ConfigError(
                f"{path}: {loaded.centroids.shape[0]} groups of {loaded.centroids.shape[-1]}-d textures, but the "
                f"config says score_groups: {groups} on {dim}-d features; refit the model"
            )
        return loaded
