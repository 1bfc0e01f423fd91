"""Prompt compression: shorten a long context field (e.g. a product description) to a character budget."""

from __future__ import annotations

import re

FILLER = frozenset(
    """a an the this that these those is are was were be been being of for with and or but to in on at by from as
    our your its their it we you which who whom whose very really highly truly fully also just only such so
    premium quality high-quality state-of-the-art innovative perfect ideal excellent great best superior
    designed made crafted engineered built features featuring offers offering provides providing ensures ensuring
    suitable perfect everyday use users customers""".split()
)
ABBREVIATIONS = {
    "millimetres": "mm", "millimeters": "mm", "millimetre": "mm", "millimeter": "mm", "centimetres": "cm",
    "centimeters": "cm", "kilograms": "kg", "kilogram": "kg", "grams": "g", "stainless steel": "SS",
    "aluminium": "Al", "aluminum": "Al", "approximately": "~", "diameter": "dia.", "temperature": "temp.",
    "maximum": "max", "minimum": "min", "with": "w/", "without": "w/o", "and": "&",
}  # fmt: skip
WORD = re.compile(r"\S+")
PARENTHESES = re.compile(r"\s*\([^)]*\)")
NUMBER_UNIT = re.compile(r"(\d[\d.,]*)\s+(mm|cm|m|kg|g|V|W|A|%|°C)\b")


def _informative(word: str) -> float:
    """How much a word tells: numbers and units first, then capitalised names, then long words."""
    bare = word.strip(".,;:!?")
    if any(char.isdigit() for char in bare):
        return 3.0
    if bare[:1].isupper():
        return 2.0
    return 1.0 + min(len(bare), 12) / 12


def compress(text: str, max_chars: int) -> str:
    """A version of `text` of at most `max_chars` characters that keeps its numbers, names and content words.

    Steps, each only while still too long: collapse whitespace; abbreviate units and materials; drop
    parentheticals; drop filler words; then keep the most informative words in their original order.
    """
    if max_chars <= 0:
        raise ValueError(f"max_chars {max_chars}: expected a positive number of characters")
    shorter = " ".join(text.split())
    if len(shorter) <= max_chars:
        return shorter
    for long, short in ABBREVIATIONS.items():
        shorter = re.sub(rf"\b{re.escape(long)}\b", short, shorter, flags=re.IGNORECASE)
    shorter = NUMBER_UNIT.sub(r"\1\2", shorter)  # '120 mm' -> '120mm': a number keeps its unit
    if len(shorter) > max_chars:
        shorter = PARENTHESES.sub("", shorter)
    if len(shorter) > max_chars:
        shorter = " ".join(w for w in shorter.split() if w.strip(".,;:!?").lower() not in FILLER)
    words = shorter.split()
    if len(shorter) <= max_chars:
        return shorter
    ranked = sorted(range(len(words)), key=lambda i: (-_informative(words[i]), i))
    kept: set[int] = set()
    length = -1
    for index in ranked:
        if length + 1 + len(words[index]) <= max_chars:
            kept.add(index)
            length += 1 + len(words[index])
    return " ".join(words[i] for i in sorted(kept)) or shorter[:max_chars]
