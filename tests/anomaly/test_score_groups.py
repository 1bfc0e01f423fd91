"""Score groups: good parts clustered by texture, each group's image scores put on one scale, a fitted round trip."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from mmfusion.config import ConfigError
from mmfusion.fitting.model import fit_model
from mmfusion.heads.patchcore.score_groups import ScoreGroups, texture
from mmfusion.pipeline import Pipeline
from mmfusion.types import InputError, Inputs

from .conftest import small_anomaly_model
from .test_position_bank import write_manifest


def two_kinds(rng: np.random.Generator, per_kind: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Textures (2n, 6) of two kinds far apart, their kind (2n,), and good scores: kind 1 sits higher and wider."""
    kinds = np.repeat([0, 1], per_kind)
    textures = rng.normal(size=(2 * per_kind, 6)) + 5.0 * kinds[:, None]
    scores = np.where(kinds == 0, rng.normal(0.0, 1.0, 2 * per_kind), rng.normal(6.0, 3.0, 2 * per_kind))
    return textures, kinds, scores


def test_texture_is_each_channels_spread_across_positions():
    features = np.zeros((2, 4, 3), np.float32)  # (B, L, D)
    features[1, :, 2] = [0.0, 2.0, 0.0, 2.0]
    np.testing.assert_allclose(texture(features), [[0, 0, 0], [0, 0, np.std([0, 2, 0, 2], ddof=1)]], rtol=1e-6)


def test_groups_follow_texture_and_put_each_groups_good_scores_on_one_scale():
    rng = np.random.default_rng(0)
    textures, kinds, scores = two_kinds(rng, 200)
    groups = ScoreGroups.fit(textures, scores, 2)
    assigned = groups.assign(textures)
    assert (assigned == kinds).all() or (assigned == 1 - kinds).all()
    rescaled = groups.rescale(textures, scores)
    for kind in (0, 1):
        assert np.median(rescaled[kinds == kind]) == pytest.approx(0.0, abs=1e-9)
        assert np.quantile(rescaled[kinds == kind], 0.9) == pytest.approx(1.0, abs=1e-9)

    # defects 4 deviations above their own kind: on one raw scale kind 0's sit among kind 1's good parts
    new_textures, new_kinds, new_good = two_kinds(rng, 100)
    defects = np.where(new_kinds == 0, 4.0, 6.0 + 4.0 * 3.0)
    truth = np.r_[np.zeros(200), np.ones(200)]
    raw = np.r_[new_good, defects]
    both = np.r_[new_textures, new_textures]
    assert roc_auc_score(truth, raw) < 0.9
    assert roc_auc_score(truth, groups.rescale(both, raw)) > 0.99


def test_score_groups_round_trip_and_refuse_what_does_not_fit(tmp_path):
    rng = np.random.default_rng(1)
    textures, _, scores = two_kinds(rng, 20)
    groups = ScoreGroups.fit(textures, scores, 2)
    groups.save(tmp_path)
    loaded = ScoreGroups.load(tmp_path, 2, 6)
    np.testing.assert_allclose(loaded.rescale(textures, scores), groups.rescale(textures, scores), rtol=1e-12)
    with pytest.raises(ConfigError, match="2 groups of 6-d textures, but the config says score_groups: 3"):
        ScoreGroups.load(tmp_path, 3, 6)
    with pytest.raises(ConfigError, match="score_groups.json: not readable"):
        ScoreGroups.load(tmp_path / "elsewhere", 2, 6)
    with pytest.raises(InputError, match="score_groups: 2 needs at least 10 good parts in the bank, got 8"):
        ScoreGroups.fit(textures[:8], scores[:8], 2)
    lopsided = np.r_[rng.normal(size=(20, 6)), rng.normal(size=(2, 6)) + 50.0]
    with pytest.raises(InputError, match="found a group of 2 good part"):
        ScoreGroups.fit(lopsided, rng.normal(size=22), 2)


def registered_cell(rng: np.random.Generator, grain: float, bars: tuple[int, ...] = (32, 96)) -> np.ndarray:
    """A 128x128 grey cell with busbars at fixed columns: smooth (grain 2) or grainy (grain 30, blotched)."""
    noise = cv2.GaussianBlur(rng.normal(size=(128, 128)), (0, 0), 2.0) * grain * 2 + rng.normal(size=(128, 128)) * 2
    cell = np.clip(150 + noise, 0, 255)
    for column in bars:
        cell[:, column - 3 : column + 3] = 40
    return cv2.cvtColor(cell.astype(np.uint8), cv2.COLOR_GRAY2RGB)


def test_a_position_bank_with_two_score_groups_fits_scores_and_reloads(tmp_path):
    rng = np.random.default_rng(0)
    kinds = [2.0] * 15 + [30.0] * 15
    train = write_manifest(tmp_path / "data", "train", [(registered_cell(rng, grain), "good") for grain in kinds])
    source = small_anomaly_model(tmp_path / "source")
    config = yaml.safe_load((source / "config.yaml").read_text())
    config["heads"]["anomaly"]["params"] = {"bank": "position", "neighbours": 2, "top_patches": 4, "score_groups": 2}
    (source / "config.yaml").write_text(yaml.safe_dump(config))
    fit_model(source, train, tmp_path / "fitted")

    pipeline = Pipeline(tmp_path / "fitted", "torch")
    head = pipeline.graph.heads["anomaly"]
    assert head.groups is not None and head.groups.groups == 2 and head.meta["score_groups"] == 2
    fitted_groups = head.groups.assign(texture(head.bank.features.transpose(0, 1)))
    assert (
        len(set(fitted_groups[:15])) == 1
        and len(set(fitted_groups[15:])) == 1
        and fitted_groups[0] != fitted_groups[15]
    )
    smooth = [registered_cell(rng, 2.0) for _ in range(5)]
    grainy = [registered_cell(rng, 30.0) for _ in range(5)]
    scores = [pipeline.predict(Inputs(image=image)).outputs["anomaly"]["raw_score"] for image in smooth + grainy]
    # new good cells of either kind land near their own group's good level (0 = median, 1 = 90th percentile)
    assert -1.5 < np.median(scores[:5]) < 1.5 and -1.5 < np.median(scores[5:]) < 1.5, scores
    # score and map are rescaled alike, by the levels of the group the cell's texture is nearest to
    features = pipeline.raw_outputs([Inputs(image=grainy[0])])["anomaly.patch_features"]  # (1, h, w, D)
    ((score, raw_map),) = head.raw_maps(features, [(128, 128)])
    flat = features.reshape(1, -1, features.shape[-1])  # (1, L, D)
    plain_score, plain_map = head.image_score(head.bank.scores(flat).reshape(features.shape[1:3]), (128, 128))
    median, spread = (level[0] for level in head.groups.levels(texture(flat)))
    assert score == pytest.approx((plain_score - median) / spread, rel=1e-6) and score == pytest.approx(scores[5])
    np.testing.assert_allclose(raw_map, (plain_map - median) / spread, rtol=1e-5, atol=1e-5)

    moved = pipeline.predict(Inputs(image=registered_cell(rng, 2.0, (56, 96)))).outputs["anomaly"]
    assert moved["raw_score"] > max(scores) and moved["label"] == "defect"
    # the map is rescaled with the score: it reaches the pixel threshold (0.5) where the bar left and where it went
    assert moved["anomaly_map"].max() >= 0.5
    assert 20 <= int(np.argmax(moved["anomaly_map"].max(axis=0))) <= 68
    assert moved["boxes"] and all(box["x2"] > 20 and box["x1"] < 68 for box in moved["boxes"])
    reloaded = Pipeline(tmp_path / "fitted", "torch").predict(Inputs(image=smooth[0])).outputs["anomaly"]
    assert reloaded["raw_score"] == pytest.approx(scores[0], rel=1e-6)


def test_score_groups_need_a_position_bank(tmp_path):
    source = small_anomaly_model(tmp_path / "small-anomaly")
    config = yaml.safe_load((source / "config.yaml").read_text())
    config["heads"]["anomaly"]["params"] = {"score_groups": 2}
    (source / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="score_groups: 2 needs bank: position"):
        Pipeline(source, "torch")
