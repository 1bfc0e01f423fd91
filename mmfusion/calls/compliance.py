"""Compliance flags: required phrases said by the right speaker in time, forbidden phrases, glossary terms.

Matching is fuzzy (rapidfuzz partial alignment on normalised text) so that a phrase still counts
when the recogniser got a word or a character wrong. Chinese text is compared without spaces,
character by character; other text in lower case with punctuation removed.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

from rapidfuzz import fuzz

from mmfusion.calls.config import PhraseList, PhraseRule

CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
NOT_WORD = re.compile(r"[^\w\s]")
SPACE_BETWEEN_CJK = re.compile(r"(?<=[\u3400-\u9fff\uf900-\ufaff]) (?=[\u3400-\u9fff\uf900-\ufaff])")


def normalize(text: str) -> str:
    """Lower case, NFKC, punctuation removed, spaces collapsed, no spaces between Chinese characters."""
    text = NOT_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower())
    return SPACE_BETWEEN_CJK.sub("", " ".join(text.split()))


@dataclass(frozen=True)
class Utterance:
    """What compliance reads of a segment: who, when, what."""

    speaker: str
    start: float
    text: str


@dataclass(frozen=True)
class PhraseHit:
    """A phrase found in the call: the rule, the phrase, who said it, when, and how well it matched (0-100)."""

    rule: str
    kind: str
    phrase: str
    speaker: str
    time: float
    score: float
    matched: str

    def to_dict(self) -> dict:
        return {
            "rule": self.rule,
            "kind": self.kind,
            "phrase": self.phrase,
            "speaker": self.speaker,
            "time": round(self.time, 2),
            "score": round(self.score, 1),
            "matched": self.matched,
        }


@dataclass
class ComplianceReport:
    """Flags (`missing:<rule>`, `late:<rule>`, `forbidden:<rule>`), every hit, and glossary occurrences."""

    flags: list[str] = field(default_factory=list)
    hits: list[PhraseHit] = field(default_factory=list)
    glossary: list[PhraseHit] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "flags": list(self.flags),
            "hits": [hit.to_dict() for hit in self.hits],
            "glossary": [hit.to_dict() for hit in self.glossary],
        }


def match_score(phrase: str, text: str) -> tuple[float, str]:
    """How well `phrase` occurs in `text` (0-100) and the matched part, both normalised."""
    needle, haystack = normalize(phrase), normalize(text)
    if not needle or not haystack:
        return 0.0, ""
    if len(haystack) < len(needle):
        # partial_ratio would look for the text inside the phrase; compare whole strings instead.
        return float(fuzz.ratio(needle, haystack)), haystack
    alignment = fuzz.partial_ratio_alignment(needle, haystack)
    return float(alignment.score), haystack[alignment.dest_start : alignment.dest_end]


def _pairs(utterances: Sequence[Utterance]) -> list[tuple[Utterance, Utterance]]:
    """Each speaker's consecutive utterances, in pairs: a phrase may straddle a pause."""
    by_speaker: dict[str, list[Utterance]] = {}
    for utterance in utterances:
        by_speaker.setdefault(utterance.speaker, []).append(utterance)
    return [pair for said in by_speaker.values() for pair in zip(said, said[1:])]


def _hit(rule: PhraseRule, kind: str, utterance: Utterance, threshold: float) -> PhraseHit | None:
    if rule.speaker is not None and utterance.speaker != rule.speaker:
        return None
    scored = [(match_score(phrase, utterance.text), phrase) for phrase in rule.phrases]
    (score, matched), phrase = max(scored, key=lambda item: item[0][0])
    if score < threshold:
        return None
    return PhraseHit(rule.id, kind, phrase, utterance.speaker, utterance.start, score, matched)


def find_rule(rule: PhraseRule, kind: str, utterances: Sequence[Utterance], min_score: float) -> list[PhraseHit]:
    """Utterances where one of the rule's phrases reaches its score, earliest first.

    A phrase split over two consecutive utterances of a speaker counts at the first one's start,
    when neither utterance holds it alone.
    """
    threshold = rule.min_score if rule.min_score is not None else min_score
    singles = {id(u): _hit(rule, kind, u, threshold) for u in utterances}
    hits = [hit for hit in singles.values() if hit is not None]
    for first, second in _pairs(utterances):
        if singles[id(first)] is None and singles[id(second)] is None:
            joined = Utterance(first.speaker, first.start, f"{first.text} {second.text}")
            hit = _hit(rule, kind, joined, threshold)
            if hit is not None:
                hits.append(hit)
    return sorted(hits, key=lambda hit: hit.time)


def _applies(phrase_list: PhraseList, language: str) -> bool:
    return phrase_list.language in ("any", language)


def check_compliance(
    utterances: Sequence[Utterance],
    phrase_lists: Sequence[PhraseList],
    language: str,
    speakers_known: bool = True,
    roles: dict[str, str] | None = None,
) -> ComplianceReport:
    """Flags and hits of every phrase list that applies to the call's language.

    A rule's `speaker` is a role (agent, customer) mapped to a speaker name by `roles`. With
    `speakers_known` False (a mono call) speakers cannot be told apart, so any speaker counts.
    """
    roles = roles or {}
    report = ComplianceReport()
    for phrase_list in phrase_lists:
        if not _applies(phrase_list, language):
            continue
        for kind in ("required", "forbidden", "glossary"):
            for rule in getattr(phrase_list, kind):
                speaker = roles.get(rule.speaker, rule.speaker) if speakers_known else None
                rule = rule.model_copy(update={"speaker": speaker})
                hits = find_rule(rule, kind, utterances, phrase_list.min_score)
                if kind == "glossary":
                    report.glossary += hits
                    continue
                report.hits += hits[:1] if kind == "required" else hits
                if kind == "forbidden" and hits:
                    report.flags.append(f"forbidden:{rule.id}")
                elif kind == "required" and not hits:
                    report.flags.append(f"missing:{rule.id}")
                elif kind == "required" and rule.within_seconds is not None and hits[0].time > rule.within_seconds:
                    report.flags.append(f"late:{rule.id}")
    return report
