"""Call metrics from per-speaker speech regions: talk ratio, silences, overlaps and interruptions, rate, loudness."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Interval = tuple[float, float]


def _union(intervals: Sequence[Interval]) -> list[Interval]:
    merged: list[list[float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(start, end) for start, end in merged]


def _intersections(first: Sequence[Interval], second: Sequence[Interval]) -> list[Interval]:
    overlaps = []
    for a_start, a_end in first:
        for b_start, b_end in second:
            start, end = max(a_start, b_start), min(a_end, b_end)
            if end > start:
                overlaps.append((start, end))
    return _union(overlaps)


def _interruptions(interrupter: Sequence[Interval], speaker: Sequence[Interval]) -> int:
    """Turns of `interrupter` that start while `speaker` is talking."""
    return sum(any(start < begin < end for start, end in speaker) for begin, _ in interrupter)


def loudness_dbfs(samples: np.ndarray) -> float | None:
    """Root-mean-square level in dB relative to full scale; None for no samples."""
    if samples.size == 0:
        return None
    power = float(np.mean(np.square(samples, dtype=np.float64)))
    return round(10 * np.log10(max(power, 1e-12)), 2)


def call_metrics(
    speech: dict[str, list[Interval]],
    words: dict[str, int],
    loudness: dict[str, float | None],
    duration: float,
) -> dict:
    """Metrics of a call from each speaker's speech intervals (s), word counts and loudness (dBFS)."""
    talk = {speaker: sum(end - start for start, end in _union(intervals)) for speaker, intervals in speech.items()}
    total_talk = sum(talk.values())
    spoken = _union([interval for intervals in speech.values() for interval in intervals])
    gaps = [(a_end, b_start) for (_, a_end), (b_start, _) in zip(spoken, spoken[1:])]
    longest = max(gaps, key=lambda gap: gap[1] - gap[0], default=None)
    speakers = list(speech)
    overlaps: list[Interval] = []
    interruptions = {speaker: 0 for speaker in speakers}
    if len(speakers) == 2:
        first, second = speakers
        overlaps = _intersections(_union(speech[first]), _union(speech[second]))
        interruptions[first] = _interruptions(speech[first], speech[second])
        interruptions[second] = _interruptions(speech[second], speech[first])
    return {
        "duration_seconds": round(duration, 2),
        "talk_seconds": {speaker: round(seconds, 2) for speaker, seconds in talk.items()},
        "talk_ratio": {
            speaker: round(seconds / total_talk, 4) if total_talk else 0.0 for speaker, seconds in talk.items()
        },
        "silence_seconds": round(max(duration - sum(end - start for start, end in spoken), 0.0), 2),
        "longest_silence_seconds": round(longest[1] - longest[0], 2) if longest else 0.0,
        "longest_silence_start": round(longest[0], 2) if longest else None,
        "overlap_count": len(overlaps),
        "overlap_seconds": round(sum(end - start for start, end in overlaps), 2),
        "overlaps": [{"start": round(start, 2), "end": round(end, 2)} for start, end in overlaps],
        "interruptions": interruptions,
        "words_per_minute": {
            speaker: round(words.get(speaker, 0) / (talk[speaker] / 60), 1) if talk[speaker] else 0.0
            for speaker in speakers
        },
        "loudness_dbfs": dict(loudness),
    }
