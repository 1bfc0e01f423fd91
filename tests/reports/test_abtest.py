"""A/B harness: a broken prompt loses with significance, identical prompts tie; noise, compression and metrics."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from mmfusion.cli.main import main
from mmfusion.pipeline import Pipeline
from mmfusion.reports.abtest import load_eval_items, paired_bootstrap, run_ab, variants_from_files, write_outputs
from mmfusion.reports.compress import compress
from mmfusion.reports.metrics import bleu4, field_accuracy, mention_accuracy, meteor_style, rouge_l
from mmfusion.reports.noise import NOISE, inject
from mmfusion.templates.schema import library
from tests.test_pipeline import BLUE, RED, tiny_model

GOOD = str(library()["defect_inspection"][1])
NOTE = "a line on the housing near the left edge, checked after the wash"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny-report"
    heads = {
        "defect": {
            "name": "classification",
            "labels": ["scratch", "crack"],
            "params": {
                "scale": 30.0,
                "examples": [{"label": "scratch", "image": "red.png"}, {"label": "crack", "image": "blue.png"}],
            },
        },
        "report": {"name": "report", "params": {"template": "defect_inspection@1", "sources": ["defect"]}},
    }  # fmt: skip
    return tiny_model(folder, heads)


@pytest.fixture(scope="module")
def eval_csv(model):
    rng = np.random.default_rng(0)
    lines = ["image,text,product,type"]
    for index in range(12):
        colour, label = (RED, "scratch") if index % 2 == 0 else (BLUE, "crack")
        image = np.clip(colour.astype(int) + rng.integers(-20, 20, colour.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(model / f"eval_{index}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        lines.append(f'eval_{index}.png,"{NOTE}","steel bracket, 120 millimetres, two 8 mm holes",{label}')
    path = model / "eval.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """The good template with the defect type and location left out of its lines: a deliberately broken prompt."""
    text = (
        open(GOOD).read().replace('item: "[{severity} {type}][{type} at the {location}]', 'item: "[{severity}][here]')
    )
    path = tmp_path_factory.mktemp("variants") / "broken.yaml"
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def pipeline(model):
    with_pipeline = Pipeline(model)
    yield with_pipeline
    with_pipeline.close()


def test_broken_prompt_ranks_below_the_good_one_with_significance(pipeline, eval_csv, broken, tmp_path):
    items = load_eval_items(eval_csv)
    variants = variants_from_files([GOOD, broken], {"product": 20})
    result = run_ab(pipeline, variants, items, noises=["mixed_zh_en"], resamples=500)
    accuracy = {r.name: r.accuracy for r in result.variants}
    assert accuracy["defect_inspection.v1"] == 1.0 and accuracy["broken"] == 0.0
    verdicts = {c.worse: c.significant for c in result.comparisons}
    assert verdicts["broken"] and verdicts["broken+compress(product=20)"]  # the broken prompt loses, significantly
    assert not any(v for worse, v in verdicts.items() if worse.startswith("defect_inspection"))
    assert result.winner is None  # the good prompt and its compressed twin tie, so neither wins outright
    good = next(r for r in result.variants if r.name == "defect_inspection.v1")
    compressed = next(r for r in result.variants if r.name.startswith("defect_inspection.v1+compress"))
    assert compressed.tokens_in < good.tokens_in and compressed.accuracy == good.accuracy
    assert set(good.robustness) == {"mixed_zh_en"} and good.p95_ms >= good.p50_ms > 0
    paths = write_outputs(result, tmp_path)
    assert json.loads(paths["json"].read_text())["winner"] == result.winner
    assert paths["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "winner:" in paths["table"].read_text()


def test_identical_prompts_tie(pipeline, eval_csv):
    result = run_ab(pipeline, variants_from_files([GOOD, GOOD]), load_eval_items(eval_csv), noises=[], resamples=500)
    assert result.winner is None
    (comparison,) = result.comparisons
    assert comparison.difference == 0.0 and not comparison.significant and comparison.p_value == 1.0


def test_ab_command_line(model, eval_csv, broken, tmp_path, capsys):
    code = main(["prompts", "ab", "--model", str(model), "--variants", GOOD, broken, "--data", str(eval_csv),
                 "--out", str(tmp_path), "--noise", "--resamples", "200", "--json"])  # fmt: skip
    assert code == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["winner"] == "defect_inspection.v1"
    assert main(["prompts", "ab", "--model", str(model), "--variants", GOOD, "--data", str(eval_csv)]) == 2
    assert "an A/B test needs at least two" in capsys.readouterr().err


def test_paired_bootstrap():
    difference, low, high, p_value = paired_bootstrap([1.0] * 20, [0.0] * 10 + [1.0] * 10)
    assert difference == 0.5 and 0 < low <= high and p_value < 0.01
    assert paired_bootstrap([0.5, 1.0, 0.0], [0.5, 1.0, 0.0])[3] == 1.0


def test_noise_kinds_change_text_deterministically():
    text = "light scratch near the left edge of the part, no crack, 10 mm long"
    for kind in NOISE:
        noisy = inject(text, kind, 3)
        assert noisy != text and noisy == inject(text, kind, 3)
    assert any("\u4e00" <= char <= "\u9fff" for char in inject(text, "mixed_zh_en", 3))
    assert inject(text, "whitespace", 3).split() == text.split()
    with pytest.raises(ValueError, match="noise 'glare' is not known"):
        inject(text, "glare", 0)


def test_compression_keeps_numbers_and_fits_the_budget():
    description = (
        "Our premium high-quality stainless steel mounting bracket (model MB-220) is designed for industrial "
        "conveyors, 120 millimetres long, 4 millimetres thick, with two 8 mm holes and a powder-coated finish."
    )
    assert len(description) > 190
    short = compress(description, 80)
    assert len(short) <= 80
    for kept in ("120mm", "4mm", "8mm", "bracket"):
        assert kept in short
    assert compress("already short", 80) == "already short"


def test_text_metrics():
    reference = "[major scratch][scratch at the top][polish the surface]"
    assert bleu4([reference], [reference]) == pytest.approx(100.0)
    assert rouge_l([reference], [reference]) == pytest.approx(1.0)
    assert meteor_style(reference, reference) > 0.95 > meteor_style("[minor spot][spot at the top]", reference)
    assert bleu4(["completely different words here"], [reference]) < 5
    assert field_accuracy({"type": "scratch", "location": "top"}, {"type": "scratch", "location": "left"}) == {
        "type": 1.0,
        "location": 0.0,
    }
    assert mention_accuracy(reference, {"type": "scratch", "location": "top", "severity": "minor"}) == pytest.approx(
        2 / 3
    )
    assert mention_accuracy("top-left scratch", {"location": "top"}) == 0.0  # whole words only
