"""Zero-shot labels, escalation points and fuzzy compliance matching on text (no speech recognition)."""

from __future__ import annotations

import pytest

from mmfusion.calls.compliance import Utterance, check_compliance, match_score
from mmfusion.calls.config import LabelSet, PhraseList, load_yaml_model
from mmfusion.calls.labels import LabelResult, escalation_points
from mmfusion.repository.folder import models_root

CALL_CENTRE = models_root() / "call-centre"


def test_zero_shot_intent_picks_the_clearly_worded_label(analyzer):
    intent = analyzer.zero_shot["intent"]
    texts = {
        "I want to cancel my subscription and close my account today": "cancellation",
        "Why was I charged twice on my credit card for the same invoice": "billing",
        "My internet connection keeps dropping every few minutes and the router shows an error": "technical_support",
        "I would like to upgrade to the premium plan, how much would that cost per month": "sales",
    }
    assert [r.label for r in intent.classify(list(texts))] == list(texts.values())


def test_zero_shot_emotion_and_escalation(analyzer):
    emotion = analyzer.zero_shot["emotion"]
    turns = [
        "Hi, I have a question about my order number.",
        "This is ridiculous, I am furious, get me your manager right now!",
        "Thank you so much, that was really helpful.",
    ]
    results = emotion.classify(turns)
    negative = set(analyzer.label_sets["emotion"].negative)
    assert results[0].label not in negative and results[1].label in negative and results[2].label == "satisfied"
    points = escalation_points([(i, 10.0 * i, t, r) for i, (t, r) in enumerate(zip(turns, results))], negative)
    assert [(p.segment, p.time, p.previous) for p in points] == [(1, 10.0, results[0].label)]


def test_escalation_only_on_turns_to_negative():
    def result(label):
        return LabelResult(label, 0.9, {label: 0.9})

    labels = ["neutral", "angry", "frustrated", "neutral", "angry"]
    points = escalation_points([(i, float(i), "", result(x)) for i, x in enumerate(labels)], {"angry", "frustrated"})
    assert [(p.segment, p.previous, p.label) for p in points] == [(1, "neutral", "angry"), (4, "neutral", "angry")]


def phrase_lists() -> list[PhraseList]:
    return [load_yaml_model(PhraseList, CALL_CENTRE / "compliance" / name) for name in ("en.yaml", "zh.yaml")]


ROLES = {"agent": "agent", "customer": "customer"}


@pytest.mark.parametrize(
    ("language", "disclosure", "greeting"),
    [
        ("en", "Please note this call may be recordid for quality purposes.", "Thank you for calling Acme."),
        ("zh", "提醒您，本次通话可能会被录因。", "感谢您的来电。"),
    ],
)
def test_required_phrase_with_one_asr_error_fires_and_absent_is_flagged(language, disclosure, greeting):
    said = [Utterance("agent", 1.0, greeting), Utterance("agent", 5.0, disclosure), Utterance("customer", 9.0, "ok")]
    report = check_compliance(said, phrase_lists(), language, roles=ROLES)
    assert "missing:recording-disclosure" not in report.flags and "missing:greeting" not in report.flags
    hit = next(h for h in report.hits if h.rule == "recording-disclosure")
    assert hit.speaker == "agent" and hit.time == 5.0 and 80 <= hit.score < 100
    absent = check_compliance([said[0], said[2]], phrase_lists(), language, roles=ROLES)
    assert "missing:recording-disclosure" in absent.flags and "missing:greeting" not in absent.flags


def test_required_phrase_rules_speaker_time_forbidden_and_glossary():
    late = [Utterance("agent", 0.0, "Thank you for calling."), Utterance("agent", 75.0, "This call may be recorded.")]
    report = check_compliance(late, phrase_lists(), "en", roles=ROLES)
    assert "late:recording-disclosure" in report.flags
    by_customer = [Utterance("customer", 2.0, "I know this call may be recorded, thank you for calling")]
    report = check_compliance(by_customer, phrase_lists(), "en", roles=ROLES)
    assert {"missing:recording-disclosure", "missing:greeting"} <= set(report.flags)
    mono = check_compliance(
        [Utterance("speaker", 2.0, by_customer[0].text)], phrase_lists(), "en", speakers_known=False
    )
    assert "missing:recording-disclosure" not in mono.flags
    promise = [Utterance("agent", 3.0, "I guarantee you will get a refund by Friday.")]
    report = check_compliance(promise, phrase_lists(), "en", roles=ROLES)
    assert "forbidden:guarantee" in report.flags and [g.rule for g in report.glossary] == ["refund"]
    assert not [f for f in check_compliance(promise, phrase_lists(), "zh", roles=ROLES).flags if "forbidden" in f]


def test_match_score_tolerates_errors_but_not_other_text():
    assert match_score("this call may be recorded", "so this call may be recorded today")[0] == 100
    assert match_score("this call may be recorded", "this cal may be recorted")[0] >= 85
    assert match_score("this call may be recorded", "the weather is lovely today")[0] < 60
    assert match_score("this call may be recorded", "recorded")[0] < 60  # a short text is not the whole phrase


def test_label_set_files_are_valid():
    for name in ("intent", "emotion"):
        label_set = load_yaml_model(LabelSet, CALL_CENTRE / "labels" / f"{name}.yaml")
        assert label_set.name == name and len(label_set.labels) >= 4
