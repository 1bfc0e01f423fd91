"""Transcription quality on real speech, stereo calls by channel, and streaming equal to whole-file analysis."""

from __future__ import annotations

import numpy as np
import pytest

from mmfusion.calls.asr_eval import score
from mmfusion.calls.decode import decode_call_audio
from mmfusion.media import SAMPLE_RATE, decode_audio
from tests.calls.conftest import CLIP, speech_span, wav_bytes
from tests.conftest import LIBRIVOX

MAX_WER = 0.10


def test_sample_clip_transcribed_with_word_timings(analyzer, clip):
    analysis = analyzer.analyze(decode_call_audio(CLIP))
    reference = CLIP.with_suffix(".txt").read_text()
    metric, error_rate = score(reference, analysis.transcript().text)
    assert metric == "wer" and error_rate <= MAX_WER
    assert analysis.language == "en" and analysis.speakers == ("speaker",)
    words = analysis.transcript().words
    assert [w.start for w in words] == sorted(w.start for w in words)
    first, last = speech_span(clip)
    assert abs(words[0].start - first) < 0.5 and abs(words[-1].end - last) < 0.5


def test_librivox_clips_word_error_rate(analyzer):
    clips = sorted(LIBRIVOX.glob("*.wav"))
    assert clips, "librivox-speech has no clips"
    errors = words = 0
    for path in clips:
        reference = path.with_suffix(".txt").read_text()
        _, error_rate = score(reference, analyzer.analyze(decode_call_audio(path)).transcript().text)
        errors += error_rate * len(reference.split())
        words += len(reference.split())
    assert errors / words <= MAX_WER


def second_clip(clip_path) -> np.ndarray:
    """Another speaker's clip: a different LibriVox clip."""
    return decode_audio(LIBRIVOX / "sense_and_sensibility_01_austen_64kb-0880.wav")


def stereo_call(agent: np.ndarray, customer: np.ndarray, customer_offset: float) -> np.ndarray:
    """(2, N): the agent's clip from 0 s on channel 0, the customer's from `customer_offset` on channel 1."""
    start = round(customer_offset * SAMPLE_RATE)
    length = max(agent.size, start + customer.size) + SAMPLE_RATE // 2
    channels = np.zeros((2, length), np.float32)
    channels[0, : agent.size] = agent
    channels[1, start : start + customer.size] = customer
    return channels


def test_stereo_call_gives_two_speakers_talk_ratio_and_overlap(analyzer, clip):
    customer = second_clip(CLIP)
    offset = 6.0
    audio = decode_call_audio(wav_bytes(stereo_call(clip, customer, offset)))
    assert audio.channel_count == 2
    analysis = analyzer.analyze(audio)
    assert analysis.speakers == ("agent", "customer")
    said = {
        speaker: " ".join(s.text for s in analysis.segments if s.speaker == speaker) for speaker in analysis.speakers
    }
    assert "dashwood" in said["agent"].lower()
    if customer.size != clip.size:  # the second LibriVox clip: "He was not an ill-disposed young man."
        assert "young man" in said["customer"].lower() and "dashwood" not in said["customer"].lower()
    else:
        assert "dashwood" in said["customer"].lower()
    agent_span, customer_span = speech_span(clip), speech_span(customer)
    agent_talk = agent_span[1] - agent_span[0]
    customer_talk = customer_span[1] - customer_span[0]
    metrics = analysis.metrics
    assert metrics["talk_ratio"]["customer"] == pytest.approx(customer_talk / (agent_talk + customer_talk), abs=0.06)
    expected_overlap = agent_span[1] - (offset + customer_span[0])
    assert metrics["overlap_count"] == 1
    assert metrics["overlap_seconds"] == pytest.approx(expected_overlap, abs=0.4)
    assert metrics["interruptions"] == {"agent": 0, "customer": 1}
    assert set(metrics["loudness_dbfs"]) == {"agent", "customer"}


def test_chunked_streaming_equals_whole_file_and_gives_partials(analyzer, clip):
    pause = np.zeros(SAMPLE_RATE * 3 // 2, np.float32)
    call = np.concatenate([clip, pause, clip])  # two turns, 1.5 s apart
    whole = analyzer.analyze(decode_call_audio(wav_bytes(call[None])))
    stream = analyzer.stream(1)
    partials, position, sizes = [], 0, [1000, 4096, 333, 16000]
    while position < call.size:
        size = sizes[len(partials) % len(sizes)]  # uneven chunks, none aligned to VAD windows
        partials.append(stream.feed(call[position : position + size]))
        position += size
    streamed = stream.finish()
    assert [(s.start, s.end, s.text) for s in streamed.segments] == [(s.start, s.end, s.text) for s in whole.segments]
    assert len(whole.segments) == 2
    emitted_early = [segment for batch in partials for segment in batch]
    assert len(emitted_early) == 1 and emitted_early[0].end < clip.size / SAMPLE_RATE
