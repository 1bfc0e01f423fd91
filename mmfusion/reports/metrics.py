"""Report metrics: BLEU-4, ROUGE-L, a METEOR-style overlap, field accuracy, schema validity, tokens, latency."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mmfusion.reports.dataset import FIELD_COLUMNS, NONE_TYPE
from mmfusion.reports.report import Report

WORD = re.compile(r"\w+(?:-\w+)*", re.UNICODE)


def bleu4(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU-4 (sacrebleu, 0..100)."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


def rouge_l(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure (rouge-score, 0..1)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    scores = [scorer.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in zip(hypotheses, references, strict=True)]
    return float(np.mean(scores)) if scores else 0.0


def _chunks(matched: list[tuple[int, int]]) -> int:
    """Runs of matches that are adjacent in both texts."""
    chunks, previous = 0, None
    for hyp_index, ref_index in sorted(matched):
        if previous is None or hyp_index != previous[0] + 1 or ref_index != previous[1] + 1:
            chunks += 1
        previous = (hyp_index, ref_index)
    return chunks


def meteor_style(hypothesis: str, reference: str) -> float:
    """METEOR with exact matches only: recall-weighted F-mean of unigrams times a fragmentation penalty (0..1)."""
    hyp = [w.lower() for w in WORD.findall(hypothesis)]
    ref = [w.lower() for w in WORD.findall(reference)]
    if not hyp or not ref:
        return float(hyp == ref)
    used: set[int] = set()
    matched: list[tuple[int, int]] = []
    for i, word in enumerate(hyp):
        for j, other in enumerate(ref):
            if j not in used and other == word:
                used.add(j)
                matched.append((i, j))
                break
    if not matched:
        return 0.0
    precision, recall = len(matched) / len(hyp), len(matched) / len(ref)
    f_mean = 10 * precision * recall / (recall + 9 * precision)
    penalty = 0.5 * (_chunks(matched) / len(matched)) ** 3
    return f_mean * (1 - penalty)


def mean_meteor_style(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """The METEOR-style score averaged over pairs."""
    scores = [meteor_style(h, r) for h, r in zip(hypotheses, references, strict=True)]
    return float(np.mean(scores)) if scores else 0.0


def report_fields(report: Report) -> dict[str, str]:
    """type / location / severity of a report's first defect ('none' and blanks when it lists none)."""
    defects = report.fields.get("defects") if report.fields else None
    if not defects:
        verdict = report.fields.get("verdict") if report.fields else None
        return {"type": NONE_TYPE, "location": "", "severity": ""} if verdict == "pass" else {}
    first = defects[0]
    return {key: str(first.get(key, "")) for key in FIELD_COLUMNS}


def field_accuracy(predicted: Mapping[str, str], expected: Mapping[str, str]) -> dict[str, float]:
    """1.0 / 0.0 per expected field: exact match of the structured value (blank expected fields are skipped)."""
    return {key: float(predicted.get(key, None) == value) for key, value in expected.items() if value}


def mention_accuracy(text: str, expected: Mapping[str, str]) -> float:
    """The share of expected field values the report text names as whole words (for free-text generators)."""
    wanted = [value for value in expected.values() if value]
    if not wanted:
        return 1.0
    lowered = text.lower()
    hits = [re.search(rf"(?<![\w-]){re.escape(value.lower())}(?![\w-])", lowered) is not None for value in wanted]
    return float(np.mean(hits))


def percentiles(values_ms: Sequence[float]) -> dict[str, float]:
    """p50 and p95 of latencies in milliseconds."""
    if not values_ms:
        return {"p50_ms": float("nan"), "p95_ms": float("nan")}
    return {"p50_ms": float(np.percentile(values_ms, 50)), "p95_ms": float(np.percentile(values_ms, 95))}


def summarise(
    reports: Sequence[Report],
    expected: Sequence[Mapping[str, str]],
    references: Sequence[str] | None = None,
    latencies_ms: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Every metric of a set of reports against their expected fields and reference texts."""
    per_field: dict[str, list[float]] = {key: [] for key in FIELD_COLUMNS}
    for report, wanted in zip(reports, expected, strict=True):
        for key, hit in field_accuracy(report_fields(report), wanted).items():
            per_field.setdefault(key, []).append(hit)
    scores = [hit for hits in per_field.values() for hit in hits]
    summary: dict[str, Any] = {
        "reports": len(reports),
        "schema_validity": float(np.mean([r.valid for r in reports])) if reports else 0.0,
        "field_accuracy": float(np.mean(scores)) if scores else float("nan"),
        **{f"{key}_accuracy": float(np.mean(hits)) for key, hits in per_field.items() if hits},
        "tokens_in": float(np.mean([r.tokens_in for r in reports])) if reports else 0.0,
        "tokens_out": float(np.mean([r.tokens_out for r in reports])) if reports else 0.0,
    }
    if references is not None:
        texts = [r.text for r in reports]
        summary.update(
            bleu4=bleu4(texts, references),
            rouge_l=rouge_l(texts, references),
            meteor_style=mean_meteor_style(texts, references),
        )
    if latencies_ms is not None:
        summary.update(percentiles(latencies_ms))
    return summary
