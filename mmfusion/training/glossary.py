"""Domain glossaries (term -> synonyms/expansions) and glossary-aware text augmentation for Chinese and English."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from mmfusion.data.manifest import ManifestError

CLAUSE_SPLIT = re.compile(r"\s*([,;，；])\s*")
FULL_WIDTH = {",": "，", ";": "；", ":": "：", "!": "！", "?": "？"}
HALF_WIDTH = {v: k for k, v in FULL_WIDTH.items()}
PLACEHOLDER = "\ue000{}\ue001"
PLACEHOLDER_PATTERN = re.compile("\ue000(\\d+)\ue001")


class GlossaryError(ManifestError):
    """A glossary file that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Match:
    """One glossary form found in a text: span, the form as written, and its group (term + synonyms)."""

    start: int
    end: int
    text: str
    group: int


class Glossary:
    """Groups of interchangeable forms: a term and its synonyms or expansions (a term alone is only protected)."""

    def __init__(self, groups: list[tuple[str, ...]]) -> None:
        self.groups = groups
        forms = {form.casefold(): index for index, group in enumerate(groups) for form in group}
        self._group_of = forms
        ordered = sorted(forms, key=len, reverse=True)  # longest first, so 保理融资业务 wins over 保理融资
        self._pattern = re.compile("|".join(_form_pattern(f) for f in ordered), re.IGNORECASE) if ordered else None

    @classmethod
    def from_terms(cls, terms: dict[str, list[str]]) -> Glossary:
        return cls([(term, *synonyms) for term, synonyms in terms.items()])

    def find(self, text: str) -> list[Match]:
        """Non-overlapping glossary forms in a text, left to right (longest form at each position)."""
        if self._pattern is None:
            return []
        return [
            Match(m.start(), m.end(), m.group(), self._group_of[m.group().casefold()])
            for m in self._pattern.finditer(text)
        ]

    def alternatives(self, match: Match) -> list[str]:
        """The other forms of a match's group."""
        return [form for form in self.groups[match.group] if form.casefold() != match.text.casefold()]


def _form_pattern(form: str) -> str:
    """A form as a regex; Latin letters and digits at its ends must not continue a longer word."""
    pattern = re.escape(form)
    if re.match(r"[A-Za-z0-9]", form):
        pattern = r"(?<![A-Za-z0-9])" + pattern
    if re.search(r"[A-Za-z0-9]$", form):
        pattern += r"(?![A-Za-z0-9])"
    return pattern


def load_glossary(path: str | Path) -> Glossary:
    """Read a glossary YAML (term: [synonyms]); GlossaryError listing every bad entry with its line."""
    path = Path(path)
    if not path.is_file():
        raise GlossaryError(f"{path}: glossary does not exist")
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise GlossaryError(f"{path}: {where}not valid YAML: {getattr(error, 'problem', error)}") from None
    if not isinstance(root, yaml.MappingNode):
        raise GlossaryError(f"{path}: expected a mapping of term: [synonyms, ...] at the top level")
    problems: list[str] = []
    groups: list[tuple[str, ...]] = []
    seen: dict[str, int] = {}
    for key, value in root.value:
        line = key.start_mark.line + 1
        term = key.value.strip() if isinstance(key, yaml.ScalarNode) else ""
        if not term:
            problems.append(f"line {line}: expected a non-empty term")
            continue
        synonyms = _synonyms(value)
        if synonyms is None:
            problems.append(f"line {value.start_mark.line + 1}: {term!r}: expected a list of synonym strings")
            continue
        for form in (term, *synonyms):
            earlier = seen.setdefault(form.casefold(), line)
            if earlier != line:
                problems.append(f"line {line}: {form!r} already appears on line {earlier}")
        groups.append((term, *synonyms))
    if problems:
        raise GlossaryError(f"{path}: {len(problems)} bad glossary entries: {'; '.join(problems)}")
    return Glossary(groups)


def _synonyms(node: yaml.Node) -> list[str] | None:
    """Synonyms of an entry: a string or a list of non-empty strings; None when malformed."""
    if isinstance(node, yaml.ScalarNode):
        if node.tag.endswith(":null"):
            return []
        return [node.value.strip()] if node.value.strip() else None
    if not isinstance(node, yaml.SequenceNode):
        return None
    values = [item.value.strip() for item in node.value if isinstance(item, yaml.ScalarNode)]
    if len(values) != len(node.value) or not all(values):
        return None
    return values


def substitute(text: str, glossary: Glossary, rng: random.Random) -> tuple[str, list[str]]:
    """Replace every glossary form that has alternatives by a random one; also returns 'old->new' notes."""
    pieces, notes, position = [], [], 0
    for match in glossary.find(text):
        alternatives = glossary.alternatives(match)
        if not alternatives:
            continue
        choice = rng.choice(alternatives)
        pieces += [text[position : match.start], choice]
        notes.append(f"{match.text}->{choice}")
        position = match.end
    return "".join(pieces) + text[position:], notes


def protect(text: str, glossary: Glossary) -> tuple[str, list[str]]:
    """Swap every glossary form for a placeholder so sentence variation cannot touch it."""
    kept: list[str] = []
    pieces, position = [], 0
    for match in glossary.find(text):
        pieces += [text[position : match.start], PLACEHOLDER.format(len(kept))]
        kept.append(match.text)
        position = match.end
    return "".join(pieces) + text[position:], kept


def restore(text: str, kept: list[str]) -> str:
    return PLACEHOLDER_PATTERN.sub(lambda m: kept[int(m.group(1))], text)


def reorder_clauses(text: str) -> str:
    """Move the first clause to the end ('A, B, C.' -> 'B, C, A.'); unchanged with fewer than two clauses."""
    body, end = (text[:-1], text[-1]) if text and text[-1] in ".。!！?？" else (text, "")
    parts = CLAUSE_SPLIT.split(body)
    clauses, separators = parts[0::2], parts[1::2]
    if len(clauses) < 2 or not all(c.strip() for c in clauses):
        return text
    clauses = clauses[1:] + clauses[:1]
    joined = clauses[0]
    for separator, clause in zip(separators, clauses[1:]):
        joined += (separator + " " if separator in ",;" else separator) + clause
    return joined + end


def swap_punctuation(text: str) -> str:
    """Full-width punctuation to half-width and back (both styles occur in Chinese records)."""
    if any(c in HALF_WIDTH for c in text):
        return "".join(HALF_WIDTH.get(c, c) for c in text)
    return re.sub(r"([,;:!?])\s*", lambda m: FULL_WIDTH[m.group(1)], text)


def text_variants(text: str, glossary: Glossary, count: int, rng: random.Random) -> list[tuple[str, str]]:
    """Up to `count` distinct variants of a text (text, how it was made); glossary forms stay whole."""
    candidates: list[tuple[str, str]] = []
    substituted, notes = substitute(text, glossary, rng)
    if notes:
        candidates.append((substituted, "glossary:" + ",".join(notes)))
    for name, vary in (("clauses", reorder_clauses), ("punctuation", swap_punctuation)):
        bases = [(text, "")] + ([(substituted, "glossary:" + ",".join(notes) + "+")] if notes else [])
        for base, how in bases:
            masked, kept = protect(base, glossary)
            candidates.append((restore(vary(masked), kept), how + name))
    variants, seen = [], {text}
    for candidate, how in candidates:
        if candidate not in seen:
            seen.add(candidate)
            variants.append((candidate, how))
    rng.shuffle(variants)
    preferred = sorted(variants, key=lambda v: not v[1].startswith("glossary"))  # substitutions first
    return preferred[:count]
