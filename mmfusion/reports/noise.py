"""Noise injection for robustness checks: typos, dropped words, shuffled whitespace, OCR confusions, mixed zh/en."""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

OCR_CONFUSIONS = {
    "o": "0", "O": "0", "0": "O", "l": "1", "1": "l", "I": "l", "i": "l", "S": "5", "5": "S", "B": "8", "8": "B",
    "e": "c", "a": "o", "g": "q", "Z": "2", "rn": "m", "m": "rn", "cl": "d",
}  # fmt: skip
CHINESE = {
    "scratch": "划痕", "scratches": "划痕", "crack": "裂纹", "cracks": "裂纹", "spot": "斑点", "spots": "斑点",
    "dent": "凹痕", "stain": "污渍", "defect": "缺陷", "defects": "缺陷", "part": "零件", "surface": "表面",
    "edge": "边缘", "corner": "角落", "left": "左", "right": "右", "top": "上", "bottom": "下", "centre": "中心",
    "center": "中心", "near": "附近", "small": "小", "large": "大", "deep": "深", "light": "浅", "line": "线",
    "board": "电路板", "clean": "干净", "no": "没有", "the": "这个", "and": "和", "after": "之后", "mark": "痕迹",
}  # fmt: skip
WORD = re.compile(r"\S+")


def typos(text: str, rng: np.random.Generator, rate: float = 0.08) -> str:
    """Swap, drop or double a letter in about `rate` of the characters."""
    chars = list(text)
    index = 0
    while index < len(chars):
        if chars[index].isalpha() and rng.random() < rate:
            action = rng.integers(3)
            if action == 0 and index + 1 < len(chars):
                chars[index], chars[index + 1] = chars[index + 1], chars[index]
                index += 1
            elif action == 1:
                del chars[index]
                continue
            else:
                chars.insert(index, chars[index])
                index += 1
        index += 1
    return "".join(chars)


def dropped_words(text: str, rng: np.random.Generator, rate: float = 0.15) -> str:
    """Leave out about `rate` of the words (at least one word stays)."""
    words = text.split()
    kept = [word for word in words if rng.random() >= rate]
    return " ".join(kept or words[:1])


def shuffled_whitespace(text: str, rng: np.random.Generator, rate: float = 0.3) -> str:
    """Replace about `rate` of the spaces between words with runs of spaces, tabs and line breaks."""
    words = text.split()
    gaps = [
        " " if rng.random() >= rate else "".join(rng.choice([" ", "  ", "\t", "\n"], rng.integers(1, 4))) for _ in words
    ]
    return "".join(word + gap for word, gap in zip(words, gaps)).strip(" ")


def ocr_confusions(text: str, rng: np.random.Generator, rate: float = 0.15) -> str:
    """Characters an OCR engine mixes up (0/O, 1/l, rn/m, ...) substituted at about `rate`."""
    out, index = [], 0
    while index < len(text):
        pair = text[index : index + 2]
        if pair in OCR_CONFUSIONS and rng.random() < rate:
            out.append(OCR_CONFUSIONS[pair])
            index += 2
            continue
        char = text[index]
        out.append(OCR_CONFUSIONS[char] if char in OCR_CONFUSIONS and rng.random() < rate else char)
        index += 1
    return "".join(out)


def mixed_chinese(text: str, rng: np.random.Generator, rate: float = 0.5) -> str:
    """About `rate` of the words that have a Chinese equivalent written in Chinese (code-switched notes)."""

    def swap(match: re.Match[str]) -> str:
        word = match.group(0)
        bare = word.strip(".,;:!?").lower()
        if bare in CHINESE and rng.random() < rate:
            return word.lower().replace(bare, CHINESE[bare])
        return word

    return WORD.sub(swap, text)


NOISE: dict[str, Callable[[str, np.random.Generator], str]] = {
    "typos": typos,
    "dropped_words": dropped_words,
    "whitespace": shuffled_whitespace,
    "ocr": ocr_confusions,
    "mixed_zh_en": mixed_chinese,
}


def inject(text: str, kind: str, seed: int) -> str:
    """One noisy copy of `text` (deterministic for a seed)."""
    if kind not in NOISE:
        raise ValueError(f"noise {kind!r} is not known; allowed: {', '.join(NOISE)}")
    return NOISE[kind](text, np.random.default_rng(seed)) if text else text
