"""Test-time flips: mirrored cells are the mirrored pair's cells; the heatmap is the flips' mean, one pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmfusion.config import ConfigError, HeadSpec
from mmfusion.encoders.image_golden_template import GoldenTemplateEncoder, GoldenTemplateParams
from mmfusion.heads.detection.flips import FLIPS, MIRRORS, cell_permutation, flip_cells, flip_map
from mmfusion.heads.detection.head import DetectionHead, DetectionParams
from mmfusion.types import Embedding

TYPES = ["open", "short"]


def pair(seed: int, height: int = 24, width: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return tuple(rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(2))


def mirrored(image: np.ndarray, vertical: bool, horizontal: bool) -> np.ndarray:
    image = image[::-1] if vertical else image
    return np.ascontiguousarray(image[:, ::-1] if horizontal else image)


@pytest.mark.parametrize(("vertical", "horizontal"), FLIPS)
def test_flipped_cells_are_the_cells_of_the_mirrored_pair(vertical, horizontal):
    encoder = GoldenTemplateEncoder(GoldenTemplateParams(fuse="both", color="gray", stride=4))
    tested, template = pair(0)
    cells = torch.from_numpy(encoder.preprocess([(tested, template)])["cells"])  # (1, 48, 6, 8)
    flipped = encoder.preprocess([(mirrored(tested, vertical, horizontal), mirrored(template, vertical, horizontal))])
    order = cell_permutation(cells.shape[1], 4, vertical, horizontal)
    assert torch.equal(flip_cells(cells, order, vertical, horizontal), torch.from_numpy(flipped["cells"]))
    assert torch.equal(flip_map(flip_map(cells, vertical, horizontal), vertical, horizontal), cells)


def head(test_flips: bool | list[str], input_dim: int = 48) -> DetectionHead:
    torch.manual_seed(0)
    params = DetectionParams(stride=4, width=8, test_flips=test_flips)
    detector = DetectionHead(params, input_dim, HeadSpec(name="detection", labels=TYPES)).eval()
    with torch.no_grad():
        for weight in detector.parameters():  # away from the "no defect" prior, so maps differ from pass to pass
            weight.normal_(0.0, 0.3)
    return detector


def embedding(encoder: GoldenTemplateEncoder, tested: np.ndarray, template: np.ndarray) -> Embedding:
    arrays = encoder.preprocess([(tested, template)])
    return encoder(torch.from_numpy(arrays["cells"]), torch.from_numpy(arrays["sizes"]))


def test_the_heatmap_is_the_mean_over_the_mirrored_pairs_and_geometry_the_plain_pass():
    encoder = GoldenTemplateEncoder(GoldenTemplateParams(fuse="both", color="gray", stride=4))
    tested, template = pair(1)
    flipping, plain = head(True), head(False)
    plain.load_state_dict(flipping.state_dict())  # the same weights; the flip orders are not weights
    with torch.inference_mode():
        got = flipping(embedding(encoder, tested, template))
        expected = plain(embedding(encoder, tested, template))
        maps = [expected["heatmap"]]
        for vertical, horizontal in FLIPS:
            seen = plain(
                embedding(encoder, mirrored(tested, vertical, horizontal), mirrored(template, vertical, horizontal))
            )
            maps.append(flip_map(seen["heatmap"], vertical, horizontal))
    assert torch.allclose(got["heatmap"], torch.stack(maps).mean(0), atol=1e-6)
    assert not torch.allclose(got["heatmap"], expected["heatmap"], atol=1e-3)  # the flips do change it
    assert torch.allclose(got["geometry"], expected["geometry"], atol=1e-6)  # one batched pass: equal to rounding
    assert set(flipping.state_dict()) == set(plain.state_dict())


@pytest.mark.parametrize("mirrors", [["both"], ["up-down", "left-right"]])
def test_named_mirrors_average_only_their_passes(mirrors):
    encoder = GoldenTemplateEncoder(GoldenTemplateParams(fuse="both", color="gray", stride=4))
    tested, template = pair(2)
    flipping, plain = head(mirrors), head(False)
    plain.load_state_dict(flipping.state_dict())
    assert flipping.flips == tuple(flip for name, flip in MIRRORS.items() if name in mirrors)  # MIRRORS' order
    with torch.inference_mode():
        got = flipping(embedding(encoder, tested, template))
        maps = [plain(embedding(encoder, tested, template))["heatmap"]]
        for vertical, horizontal in flipping.flips:
            seen = plain(
                embedding(encoder, mirrored(tested, vertical, horizontal), mirrored(template, vertical, horizontal))
            )
            maps.append(flip_map(seen["heatmap"], vertical, horizontal))
        every = head(True)(embedding(encoder, tested, template))["heatmap"]
    assert torch.allclose(got["heatmap"], torch.stack(maps).mean(0), atol=1e-6)
    assert not torch.allclose(got["heatmap"], every, atol=1e-4)  # fewer passes: another mean


def test_flips_name_known_mirrors():
    with pytest.raises(ValueError, match="left-right"):
        head(["sideways"])
    with pytest.raises(ConfigError, match=r"test_flips: \[\]; expected true, false or mirrors"):
        head([])


def test_flips_need_pixel_unshuffled_cells():
    with pytest.raises(ConfigError, match="input dim 50 is not a multiple of stride 4 squared"):
        head(True, input_dim=50)


def test_the_exported_graph_flips_batches_of_sizes_it_was_not_traced_with(tmp_path):
    import shutil

    import yaml

    from mmfusion.cli.main import main
    from mmfusion.heads.detection.head import WEIGHTS_FILE
    from mmfusion.pipeline import Pipeline
    from mmfusion.repository.folder import FITTED_DIR, models_root
    from mmfusion.types import Inputs
    from tests.detection.boards import clean_board, defective_board

    shipped = models_root() / "pcb-template"
    if not (shipped / FITTED_DIR / "defects" / WEIGHTS_FILE).is_file():
        pytest.skip(f"{shipped} has no fitted detector (run python -m mmfusion.fitting.deeppcb)")
    model = shutil.copytree(shipped, tmp_path / "pcb-template")
    (model / "manifest.json").unlink(missing_ok=True)  # the config changes below
    config = yaml.safe_load((model / "config.yaml").read_text())
    config["heads"]["defects"]["params"]["test_flips"] = True
    config["runtime"] = {"backend": "onnxruntime"}
    (model / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["export", str(model), "--backend", "onnx", "--batch-sizes", "1,8"]) == 0
    eager, exported = Pipeline(model, backend="torch"), Pipeline(model, backend="onnxruntime")
    board, clean = defective_board(), clean_board()
    for batch in (1, 3):  # 3: not a traced size, so nothing in the graph may pin the batch
        items = [
            Inputs(image=board, reference=clean),
            Inputs(image=clean, reference=clean),
            Inputs(image=board[:, ::-1].copy(), reference=clean[:, ::-1].copy()),
        ][:batch]
        want, got = eager.predict_batch(items), exported.predict_batch(items)
        for a, b in zip(want, got, strict=True):
            assert np.allclose(a.outputs["defects"]["heatmap"], b.outputs["defects"]["heatmap"], atol=1e-4)
            assert [box["label"] for box in a.outputs["defects"]["boxes"]] == [
                box["label"] for box in b.outputs["defects"]["boxes"]
            ]
    assert got[0].outputs["defects"]["label"] == "defect" and got[1].outputs["defects"]["label"] == "pass"
