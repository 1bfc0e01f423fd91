"""Defect detection head: per-type centre heatmaps and box geometry in the graph, boxes and thresholds outside."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch
from pydantic import Field

from mmfusion.config import ConfigError, HeadSpec, PartParams
from mmfusion.data.manifest import Box
from mmfusion.heads.base import Head
from mmfusion.heads.detection.decode import decode_boxes
from mmfusion.heads.detection.flips import cell_permutation, chosen_flips, flip_cells, flip_map
from mmfusion.heads.detection.network import CenterNet
from mmfusion.heads.detection.topology import MIN_PIECE, TOPOLOGY_TYPES, retype
from mmfusion.registry import HEADS
from mmfusion.types import Embedding, Inputs

WEIGHTS_FILE = "detector.pt"
CALIBRATION_FILE = "calibration.json"
DEFECT, PASS = "defect", "pass"


class TrainingParams(PartParams):
    """`training:` block of the detection head's params: how `mmfusion fit` trains the detector on labelled pairs."""

    epochs: int = Field(default=8, ge=1)
    batch_size: int = Field(default=32, ge=1)
    crop: int = Field(default=160, ge=32)
    defect_crops: int = Field(default=3, ge=0)
    background_crops: int = Field(default=1, ge=0)
    learning_rate: float = Field(default=3e-3, gt=0)
    template_shift: float = Field(default=0.3, ge=0, le=1)
    noise: float = Field(default=0.5, ge=0, le=1)
    scale: float = Field(default=0.0, ge=0, le=1)
    """Crops zoomed by a factor drawn log-uniformly in [1 / (1 + scale), 1 + scale]: traces and pads of other widths."""
    invert: float = Field(default=0.0, ge=0, le=1)
    """Share of crops with copper and board swapped (both images 255 - pixels) and each type read as its inverse
    (open / short, mousebite / spur, pin-hole / copper): designs sparse in copper look like dense ones."""
    identical: float = Field(default=0.0, ge=0, le=1)
    """Share of crops with nothing to find: the tested image shown as its own template, or the template as the
    tested image (no boxes). A defect's shape with no difference is not a defect: the network must compare."""
    morphology: float = Field(default=0.0, ge=0, le=1)
    """Share of crops whose two images are both eroded or dilated by a 3x3 or 5x5 square (the same way): traces,
    pads and gaps one or two pixels wider or narrower, as on a design drawn with other widths."""
    weight_decay: float = Field(default=1e-4, ge=0)
    """AdamW's decoupled weight decay: larger pulls the weights toward zero, a smoother detector."""
    seed: int = 0
    device: str = "auto"
    """Where the network trains: auto (CUDA when the machine has it), cpu, cuda or cuda:N."""
    workers: int = Field(default=0, ge=0)
    """Processes cutting crops ahead, an epoch each with its own random stream (0: here, one stream for the run)."""


class DetectionParams(PartParams):
    """`params:` for the detection head; `stride` must equal the encoder's."""

    stride: int = Field(default=8, ge=1, le=32)
    width: int = Field(default=32, ge=4)
    min_score: float = Field(default=0.05, ge=0, le=1)
    nms_iou: float = Field(default=0.5, ge=0, le=1)
    max_boxes: int = Field(default=100, ge=1)
    iou_threshold: float = Field(default=0.33, ge=0, le=1)
    test_flips: bool | list[Literal["left-right", "up-down", "both"]] = False
    """Average the heatmaps over the pair as given and mirrored left-right, up-down and both (true), or only the
    mirrors named (["both"]: the half turn, two passes instead of four). One network pass on (1 + mirrors) times the
    batch; box sizes from the plain pass. DeepPCB unseen designs, five folds: F 0.968 -> 0.972 with all three."""
    topology_types: bool = False
    """Retype each box within its side (copper missing or extra) by what it does to the copper, read from the tested
    image and its template (topology.py): open / mousebite by whether it severs, short / spur by whether it joins,
    and pin-hole / copper for a hole or an island when the labels name them (they must name the first four)."""
    copper: Literal["dark", "light"] = "dark"
    """topology_types: how copper shows in the images (DeepPCB: dark)."""
    min_piece: int = Field(default=MIN_PIECE, ge=1)
    """topology_types: pixels a piece of copper needs to count when a cut splits a pour (smaller ones: specks)."""
    training: TrainingParams = Field(default_factory=TrainingParams)


@HEADS.register("detection")
class DetectionHead(Head):
    """Boxes of typed defects from spatial tokens (e.g. image.golden_template's fused pair cells).

    forward gives `heatmap` (B, K, h, w) per-type centre probabilities and `geometry` (B, 4, h, w) box
    log-size and centre offset in cells; postprocess turns peaks into boxes above the score threshold
    (calibrated into `fitted/<head>/calibration.json`, else the config's thresholds). Types are `labels`.
    """

    Params = DetectionParams
    example_params = {"stride": 4, "width": 8}
    example_grid = (8, 8)
    dense_outputs = True
    reads_inputs = True

    def __init__(self, params: DetectionParams, input_dim: int, spec: HeadSpec) -> None:
        super().__init__(params, input_dim, spec)
        if not spec.labels:
            raise ConfigError("detection head: labels: empty; expected the defect type names")
        self.network = CenterNet(input_dim, len(spec.labels), params.width)
        self.calibration: dict[str, Any] = {}
        self.named_types = frozenset(spec.labels)  # what topology_types may retype into
        missing = [kind for kind in TOPOLOGY_TYPES if kind not in spec.labels]
        if params.topology_types and missing:
            raise ConfigError(
                f"detection head: topology_types: true retypes {', '.join(TOPOLOGY_TYPES)}; labels {spec.labels} "
                f"lack {', '.join(missing)}; name them or set topology_types: false"
            )
        self.flips = chosen_flips(params.test_flips)  # (up-down, left-right) of each extra pass
        if params.test_flips == []:
            raise ConfigError(
                "detection head: test_flips: []; expected true, false or mirrors from left-right, up-down, both"
            )
        if self.flips:
            if input_dim % (params.stride * params.stride):
                raise ConfigError(
                    f"detection head: test_flips needs pixel-unshuffled cells (D = planes * stride^2); "
                    f"input dim {input_dim} is not a multiple of stride {params.stride} squared; use the "
                    "image.golden_template encoder with the same stride, or set test_flips: false"
                )
            for index, (vertical, horizontal) in enumerate(self.flips):
                order = cell_permutation(input_dim, params.stride, vertical, horizontal)
                self.register_buffer(f"flip_order_{index}", order, persistent=False)  # not in the weights file

    @property
    def types(self) -> list[str]:
        return list(self.spec.labels)

    def threshold(self, kind: str) -> float:
        """The score a box of type `kind` needs: calibrated when fitted, else from the config."""
        if "threshold" in self.calibration:
            return float(self.calibration["threshold"])
        return float(self.spec.thresholds.get(kind, self.spec.threshold))

    def _cells(self, fused: Embedding) -> torch.Tensor:
        """The fused tokens (B, h*w, D) back on their grid, (B, D, h, w)."""
        if fused.grid is None:
            raise ValueError("detection head reads spatial tokens; the fused embedding has no grid")
        height, width = fused.grid
        batch, _, dim = fused.tokens.shape
        return fused.tokens.transpose(1, 2).reshape(batch, dim, height, width)

    def maps(self, fused: Embedding) -> tuple[torch.Tensor, torch.Tensor]:
        """Heatmap logits (B, K, h, w) and geometry (B, 4, h, w) from the fused tokens' grid (one plain pass)."""
        return self.network(self._cells(fused))

    def forward(self, fused: Embedding) -> dict[str, torch.Tensor]:
        cells = self._cells(fused)  # (B, D, h, w)
        batch, grid = cells.shape[0], cells.shape[-2:]  # sizes read off tensors stay free in an exported graph
        flipping = bool(self.flips) and not self.training
        if flipping:  # the mirrored pairs ride in the same batch: one network pass, each layer quantised alike
            mirrors = [
                flip_cells(cells, getattr(self, f"flip_order_{index}"), vertical, horizontal)
                for index, (vertical, horizontal) in enumerate(self.flips)
            ]
            cells = torch.cat([cells, *mirrors])  # (B * (1 + F), D, h, w), F = len(self.flips)
        fine = self.network.features(cells)  # (B * (1 + F), W, h, w)
        heatmap = torch.sigmoid(self.network.heatmap(fine))  # (B * (1 + F), K, h, w)
        geometry = self.network.geometry(fine[:batch] if flipping else fine)  # (B, 4, h, w): sizes from the plain pass
        if flipping:
            views = [heatmap[index * batch : (index + 1) * batch] for index in range(1 + len(self.flips))]
            heatmap = views[0] + sum(flip_map(view, *flip) for view, flip in zip(views[1:], self.flips, strict=True))
            heatmap = heatmap / (1 + len(self.flips))  # (B, K, h, w)
        valid = fused.mask.reshape(batch, 1, *grid).to(heatmap.dtype)  # (B, 1, h, w)
        return {"heatmap": heatmap * valid, "geometry": geometry}

    def detect(self, outputs: dict[str, np.ndarray], min_score: float | None = None) -> list[list[Box]]:
        """Every peak box per item scoring at least `min_score` (default: the params' candidate floor)."""
        floor = self.params.min_score if min_score is None else min_score
        return [
            decode_boxes(
                heat, geometry, self.params.stride, self.types, floor, self.params.nms_iou, None, self.params.max_boxes
            )
            for heat, geometry in zip(outputs["heatmap"], outputs["geometry"], strict=True)
        ]

    def retype(self, boxes: list[Box], item: Inputs | None) -> list[Box]:
        """With topology_types, boxes retyped by connectivity in the item's image and reference; else as given."""
        if not self.params.topology_types or item is None or item.image is None or item.reference is None:
            return boxes
        return retype(boxes, item.image, item.reference, self.params.copper, self.named_types, self.params.min_piece)

    def postprocess(self, outputs: dict[str, np.ndarray], inputs: list[Inputs] | None = None) -> list[dict[str, Any]]:
        # Candidates below every type's threshold can neither be kept nor suppress a box that is (greedy NMS
        # suppresses only by higher scores), so peaks start at the lowest threshold: the same boxes, less NMS.
        floor = max(self.params.min_score, min(self.threshold(kind) for kind in self.types))
        items = inputs or [None] * len(outputs["heatmap"])
        results = []
        for heat, boxes, item in zip(outputs["heatmap"], self.detect(outputs, min_score=floor), items, strict=True):
            kept = [b for b in self.retype(boxes, item) if b.score >= self.threshold(b.type)]
            type_scores = heat.reshape(heat.shape[0], -1).max(1)  # (K,)
            stride = self.params.stride
            heatmap = cv2.resize(
                heat.max(0), (heat.shape[2] * stride, heat.shape[1] * stride), interpolation=cv2.INTER_LINEAR
            )
            results.append(
                {
                    "label": DEFECT if kept else PASS,
                    "score": float(type_scores.max()) if type_scores.size else 0.0,
                    "scores": {kind: float(score) for kind, score in zip(self.types, type_scores, strict=True)},
                    "boxes": [b.to_dict() for b in kept],
                    "heatmap": heatmap,
                }
            )
        return results

    def save_fitted(self, folder: Path) -> None:
        """Write the detector weights and the calibration (threshold, types) to `folder`."""
        self.save_calibration(folder)  # makes the folder
        torch.save(self.network.state_dict(), Path(folder) / WEIGHTS_FILE)

    def save_calibration(self, folder: Path) -> None:
        """Write only the calibration (threshold, types) to `folder`, leaving the weights as they are."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        document = {"types": self.types, "stride": self.params.stride, **self.calibration}
        (folder / CALIBRATION_FILE).write_text(json.dumps(document, indent=2) + "\n")

    def load_fitted(self, folder: Path) -> None:
        """Load what save_fitted wrote; ConfigError when the types or stride differ from this config's."""
        from mmfusion.security.integrity import read_model_file, safe_torch_load

        folder = Path(folder)
        calibration_path = folder / CALIBRATION_FILE
        document = json.loads(read_model_file(calibration_path)) if calibration_path.is_file() else {}
        if document.get("types", self.types) != self.types:
            raise ConfigError(
                f"{calibration_path}: types {document['types']} differ from the config's labels {self.types}"
            )
        if document.get("stride", self.params.stride) != self.params.stride:
            raise ConfigError(
                f"{calibration_path}: stride {document['stride']} differs from the config's {self.params.stride}"
            )
        try:
            self.network.load_state_dict(safe_torch_load(folder / WEIGHTS_FILE))
        except RuntimeError as error:
            raise ConfigError(
                f"{folder / WEIGHTS_FILE}: does not fit this detector ({str(error).splitlines()[0]})"
            ) from None
        self.calibration = {k: v for k, v in document.items() if k not in ("types", "stride")}
        self.eval()
