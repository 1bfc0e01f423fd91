"""Generators: the template report lists exactly the defects; hf_causal_lm repairs, retries once, fails clearly."""

from __future__ import annotations

import json

import pytest

from mmfusion.reports.findings import findings_from_outputs, location_of, severity_of
from mmfusion.reports.generators import GENERATORS, ReportInput
from mmfusion.reports.generators.hf_causal_lm import HFCausalLMGenerator, ReportSchemaError, extract_json
from mmfusion.templates.schema import load_template

TEMPLATE = load_template("defect_inspection@1")
RESULT = {
    "detector": {
        "boxes": [
            {"x1": 10, "y1": 10, "x2": 50, "y2": 40, "label": "scratch", "score": 0.95},  # centre (30, 25): top-left
            {"x1": 260, "y1": 200, "x2": 300, "y2": 260, "label": "spot", "score": 0.5},  # (280, 230): bottom-right
        ]
    },
    "verdict": {"label": "crack", "score": 0.7, "scores": {"crack": 0.7, "pass": 0.3}},
    "flags": {"flags": ["stain"], "scores": {"stain": 0.9, "dent": 0.1}},
    "quality": {"label": "pass", "score": 0.99},
}


def test_findings_of_every_head_kind():
    found = findings_from_outputs(RESULT, size=(300, 300))
    assert [(f.type, f.location, f.severity, f.source) for f in found] == [
        ("scratch", "top-left", "critical", "detector"),
        ("spot", "bottom-right", "minor", "detector"),
        ("crack", "whole part", "major", "verdict"),
        ("stain", "whole part", "critical", "flags"),
    ]
    assert findings_from_outputs(RESULT, sources=["quality"]) == []  # an ok label is no finding
    assert location_of(0.5, 0.5) == "centre" and location_of(0.99, 0.0) == "top-right"
    assert [severity_of(s) for s in (0.1, 0.6, 0.85)] == ["minor", "major", "critical"]


def test_template_report_lists_exactly_the_defects_of_a_result():
    found = findings_from_outputs(RESULT, size=(300, 300))
    pieces: list[str] = []
    report = GENERATORS.get("template")().generate(TEMPLATE, ReportInput(found, {"note": "two marks"}), pieces.append)
    assert "".join(pieces) == report.text and len(pieces) > 4  # streamed word by word
    assert report.valid and report.fields["verdict"] == "fail"
    listed = [(d["type"], d["location"], d["severity"]) for d in report.fields["defects"]]
    assert listed == [(f.type, f.location, f.severity) for f in found]
    assert len(report.text.splitlines()) == len(found)
    for finding in found:
        assert f"[{finding.severity} {finding.type}][{finding.type} at the {finding.location}]" in report.text
    clean = GENERATORS.get("template")().generate(TEMPLATE, ReportInput([]), lambda _: None)
    assert clean.fields == {"verdict": "pass", "summary": "no defects", "defects": []}
    assert clean.text == "[none][no defects found][release the part]"


def test_extract_json_repairs_fences_trailing_commas_and_truncation():
    fenced = '<reasoning>one scratch</reasoning>```json\n{"verdict": "pass", "defects": [],}\n```'
    assert extract_json(fenced) == ({"verdict": "pass", "defects": []}, "")
    truncated = '{"verdict": "fail", "defects": [{"type": "scratch", "location": "top"'
    assert extract_json(truncated)[0] == {"verdict": "fail", "defects": [{"type": "scratch", "location": "top"}]}
    assert extract_json("no json here") == (None, "no JSON object in the answer")


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    """A random-weight GPT-2 with a byte-level BPE trained here on a few lines: nothing is downloaded."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    bpe = ByteLevelBPETokenizer()
    corpus = ['{"verdict": "fail", "defects": [{"type": "scratch"}]}', "inspection report of one part"] * 20
    bpe.train_from_iterator(corpus, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    tokenizer.save_pretrained(folder)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=2, n_head=2)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def test_hf_causal_lm_random_model_fails_clearly_after_one_retry(tiny_gpt2):
    generator = HFCausalLMGenerator(tiny_gpt2, max_new_tokens=12)
    prompts: list[str] = []
    complete = generator.complete
    generator.complete = lambda prompt, emit: prompts.append(prompt) or complete(prompt, emit)
    pieces: list[str] = []
    with pytest.raises(
        ReportSchemaError, match=r"schema of template defect_inspection@1 after one repair and one retry"
    ):
        generator.generate(TEMPLATE, ReportInput([], {"note": "a mark"}), pieces.append)
    assert len(prompts) == 2 and "# Correction" in prompts[1]  # exactly one retry, told what was wrong
    assert "".join(pieces).strip()  # the model's tokens were streamed as they came


def test_hf_causal_lm_valid_answer_repaired_and_retried(tiny_gpt2):
    generator = HFCausalLMGenerator(tiny_gpt2, max_new_tokens=4)
    good = {"verdict": "fail", "defects": [{"type": "crack", "location": "left", "severity": "major",
                                            "suggested_change": "reject the part"}]}  # fmt: skip
    answers = iter(["```json\n" + json.dumps(good)[:-1] + ",}\n```"])  # fenced, trailing comma
    generator.complete = lambda prompt, emit: (next(answers), 10, 5)
    report = generator.generate(TEMPLATE, ReportInput([]), lambda _: None)
    assert report.fields == good and report.valid and report.text.startswith("[major crack][crack at the left]")

    answers = iter(['{"verdict": "maybe"}', json.dumps(good)])  # schema-invalid, then valid
    generator.complete = lambda prompt, emit: (next(answers), 10, 5)
    retried = generator.generate(TEMPLATE, ReportInput([]), lambda _: None)
    assert retried.fields == good and (retried.tokens_in, retried.tokens_out) == (20, 10)


def test_hf_causal_lm_config_mistakes_fail_when_the_model_loads(tmp_path):
    from mmfusion.config import ConfigError, HeadSpec, validate_params
    from mmfusion.heads.report import ReportHead, ReportParams

    with pytest.raises(ConfigError, match="generator hf_causal_lm needs `path`: a local transformers model folder"):
        validate_params(ReportParams, {"generator": "hf_causal_lm"}, "config.yaml", ("heads", "report"), tmp_path)
    params = validate_params(
        ReportParams, {"generator": "hf_causal_lm", "path": "lm"}, "config.yaml", ("heads", "report"), tmp_path
    )
    with pytest.raises(ConfigError, match="is not a transformers model folder"):
        ReportHead(params, 8, HeadSpec(name="report"))
