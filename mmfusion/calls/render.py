"""Call analysis as text for people: transcript by speaker with timestamps, labels, flags, metrics."""

from __future__ import annotations


def _clock(seconds: float) -> str:
    minutes, rest = divmod(float(seconds), 60)
    return f"{int(minutes):02d}:{rest:05.2f}"


def _labels(labels: dict) -> str:
    return ", ".join(f"{task} {value.get('label', '')} {value.get('score', 0.0):.2f}" for task, value in labels.items())


def segment_line(segment: dict, width: int = 0) -> str:
    """One segment (`Segment.to_dict()`, or a CallSegment as a dict) as `[start - end] speaker: text (labels)`."""
    tags = _labels(segment.get("labels", {}))
    return (
        f"[{_clock(segment.get('start', 0.0))} - {_clock(segment.get('end', 0.0))}] "
        f"{segment.get('speaker', ''):<{width}}: {segment.get('text') or '(no words)'}"
        + (f"  ({tags})" if tags else "")
    )


def render_call(call: dict) -> str:
    """Lines for a call analysis dict (`CallAnalysis.to_dict()`, or the `call` head's extra of a result)."""
    lines = [
        f"call: {call['duration']:.1f} s, language {call['language'] or '-'}, speakers {', '.join(call['speakers'])}"
    ]
    width = max((len(segment["speaker"]) for segment in call["segments"]), default=0)
    for segment in call["segments"]:
        lines.append(f"  {segment_line(segment, width)}")
    if call["labels"]:
        lines.append(f"labels: {_labels(call['labels'])}")
    for escalation in call["escalations"]:
        lines.append(
            f"escalation at {_clock(escalation['time'])}: {escalation['from'] or '-'} -> {escalation['to']} "
            f'"{escalation["text"]}"'
        )
    lines.append(f"flags: {', '.join(call['flags']) or 'none'}")
    for hit in call["compliance"]["hits"]:
        lines.append(
            f"  {hit['kind']} {hit['rule']}: {hit['speaker']} at {_clock(hit['time'])} "
            f'"{hit["matched"]}" (score {hit["score"]:.0f})'
        )
    terms = sorted({hit["rule"] for hit in call["compliance"]["glossary"]})
    if terms:
        lines.append(f"glossary: {', '.join(terms)}")
    metrics = call["metrics"]
    per_speaker = ", ".join(
        f"{speaker} {metrics['talk_ratio'][speaker]:.0%} talk, {metrics['words_per_minute'][speaker]:.0f} wpm, "
        f"{metrics['loudness_dbfs'][speaker] if metrics['loudness_dbfs'][speaker] is not None else '-'} dBFS, "
        f"{int(metrics['interruptions'][speaker])} interruptions"
        for speaker in metrics["talk_ratio"]
    )
    lines.append(f"metrics: {per_speaker}")
    lines.append(
        f"  longest silence {metrics['longest_silence_seconds']:.1f} s, "
        f"overlaps {int(metrics['overlap_count'])} ({metrics['overlap_seconds']:.1f} s)"
    )
    return "\n".join(lines)
