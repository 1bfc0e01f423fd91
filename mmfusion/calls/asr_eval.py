"""Word error rate (character error rate for Chinese) and real-time factor of the call transcriber on a manifest."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jiwer
from whisper.normalizers import BasicTextNormalizer, EnglishTextNormalizer

from mmfusion.calls.compliance import CJK
from mmfusion.data.csv_rows import collect_rows, read_rows

REQUIRED_COLUMNS = ("audio", "text")


@dataclass(frozen=True)
class AsrItem:
    """One manifest row: an audio file and its reference transcript."""

    line: int
    audio: Path
    text: str


@dataclass(frozen=True)
class AsrScore:
    """One file's hypothesis, error rate (WER, or CER for Chinese), audio seconds and processing seconds."""

    audio: str
    reference: str
    hypothesis: str
    metric: str
    error_rate: float
    audio_seconds: float
    seconds: float


def read_asr_manifest(path: str | Path) -> list[AsrItem]:
    """Rows of a CSV with columns audio,text (audio paths relative to the manifest); every bad row is reported."""
    root = Path(path).parent

    def check(line: int, row: dict[str, str], problems: list[str]) -> AsrItem | None:
        audio = root / row["audio"]
        if not row["audio"] or not audio.is_file():
            problems.append(f"line {line}: audio {row['audio']!r} does not exist")
        elif not row["text"]:
            problems.append(f"line {line}: text is empty; expected the reference transcript")
        else:
            return AsrItem(line, audio, row["text"])
        return None

    return collect_rows(path, read_rows(path, "manifest", REQUIRED_COLUMNS), check, expected="one row per audio file")


def is_chinese(text: str) -> bool:
    """True when most letters of the text are Chinese characters (score it by characters)."""
    letters = [c for c in text if c.isalnum()]
    return bool(letters) and sum(bool(CJK.match(c)) for c in letters) > len(letters) / 2


def score(reference: str, hypothesis: str) -> tuple[str, float]:
    """('wer' or 'cer', the error rate) after whisper's text normalisation."""
    if is_chinese(reference):
        normalize = BasicTextNormalizer()
        ref, hyp = normalize(reference).replace(" ", ""), normalize(hypothesis).replace(" ", "")
        return "cer", float(jiwer.cer(ref, hyp)) if ref else float(bool(hyp))
    normalize = EnglishTextNormalizer()
    ref, hyp = normalize(reference), normalize(hypothesis)
    return "wer", float(jiwer.wer(ref, hyp)) if ref.strip() else float(bool(hyp.strip()))


def evaluate(
    items: list[AsrItem], transcribe: Callable[[Path], tuple[str, float]], progress: bool = True
) -> list[AsrScore]:
    """Transcribe each item (`transcribe(path) -> (text, audio seconds)`) and score it against its reference."""
    from tqdm import tqdm

    scores = []
    for item in tqdm(items, desc="eval-asr", unit="file", disable=not progress):
        started = time.perf_counter()
        hypothesis, audio_seconds = transcribe(item.audio)
        seconds = time.perf_counter() - started
        metric, error_rate = score(item.text, hypothesis)
        scores.append(AsrScore(str(item.audio), item.text, hypothesis, metric, error_rate, audio_seconds, seconds))
    return scores


def summary(scores: list[AsrScore]) -> dict:
    """Corpus error rates per metric (weighted by reference length) and the real-time factor."""
    totals: dict[str, list[float]] = {}
    for item in scores:
        units = len(item.reference.replace(" ", "")) if item.metric == "cer" else len(item.reference.split())
        totals.setdefault(item.metric, [0.0, 0.0])
        totals[item.metric][0] += item.error_rate * units
        totals[item.metric][1] += units
    audio_seconds = sum(item.audio_seconds for item in scores)
    seconds = sum(item.seconds for item in scores)
    return {
        "files": len(scores),
        **{metric: round(errors / units, 4) if units else 0.0 for metric, (errors, units) in totals.items()},
        "audio_seconds": round(audio_seconds, 2),
        "seconds": round(seconds, 2),
        "real_time_factor": round(seconds / audio_seconds, 4) if audio_seconds else 0.0,
    }
