"""A call while it goes on (calls/live.py): PCM16 chunks at any rate, and flags the moment they fire."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from scipy.signal import resample_poly

from mmfusion.calls.call import Segment
from mmfusion.calls.config import LabelSet, PhraseList, load_call_config, load_yaml_model
from mmfusion.calls.labels import LabelResult
from mmfusion.calls.live import LiveFlags, PcmStream
from mmfusion.repository.folder import models_root
from mmfusion.types import InputError


def _pcm(channels: np.ndarray) -> bytes:
    """(C, N) float samples as interleaved little-endian PCM16 bytes."""
    return (channels.T * 32767).round().astype("<i2").tobytes()


def _tones(rate: int, seconds: float = 1.0) -> np.ndarray:
    time = np.arange(round(rate * seconds)) / rate
    return 0.5 * np.stack([np.sin(2 * np.pi * 300 * time), np.sin(2 * np.pi * 700 * time)])  # (2, N)


def _played(stream: PcmStream, data: bytes, pieces: int) -> np.ndarray:
    frames = np.array_split(np.frombuffer(data, "<i2").reshape(-1, stream.channels), pieces)
    out = [stream.push(piece.tobytes()) for piece in frames] + [stream.flush()]
    return np.concatenate(out, axis=1)  # (C, n)


@pytest.mark.parametrize("rate", [8000, 44100])
def test_pcm_stream_resamples_the_same_however_it_is_chunked(rate):
    tones = _tones(rate)
    data = _pcm(tones)
    whole = _played(PcmStream(rate, 2), data, 1)
    chunked = _played(PcmStream(rate, 2), data, 23)
    assert whole.shape == chunked.shape == (2, 16000) and whole.dtype == np.float32
    np.testing.assert_array_equal(whole, chunked)
    reference = resample_poly(tones, 16000, rate, axis=1)  # what AnalyzeAudio's decoder gives
    assert np.abs(whole[:, 200:-200] - reference[:, 200:-200]).max() < 0.01


def test_pcm_stream_at_16k_is_exact_and_checks_what_it_is_given():
    tones = _tones(16000, 0.5)
    stream = PcmStream(16000, 2)
    out = stream.push(_pcm(tones))
    np.testing.assert_allclose(out, tones, atol=1 / 32768 + 1e-6)
    assert stream.flush().shape == (2, 0)
    with pytest.raises(InputError, match=r"audio: 1001 bytes is not a whole number of 2-channel PCM16 frames"):
        stream.push(b"\0" * 1001)
    with pytest.raises(InputError, match=r"config\.sample_rate: 4000 Hz; PCM16 needs 8000\.\.192000 Hz"):
        PcmStream(4000, 1)
    with pytest.raises(InputError, match=r"config\.channels: 0; expected 1 \(mono\) or 2 \(agent and customer\)"):
        PcmStream(16000, 0)


@pytest.fixture(scope="module")
def call_rules():
    """What LiveFlags reads of a CallAnalyzer, from the shipped call-centre folder (no models loaded)."""
    config = load_call_config(models_root() / "call-centre")
    phrase_lists = [load_yaml_model(PhraseList, path) for path in config.compliance]
    label_sets = {task: load_yaml_model(LabelSet, spec.label_set) for task, spec in config.labels.items()}
    return SimpleNamespace(config=config, phrase_lists=phrase_lists, label_sets=label_sets)


def _said(speaker: str, start: float, text: str, emotion: str = "neutral") -> Segment:
    emotions = {"emotion": LabelResult(emotion, 0.9, {emotion: 0.9})}
    return Segment(speaker, 0 if speaker == "agent" else 1, start, start + 2.0, text, "en", labels=emotions)


def test_flags_fire_with_the_segment_that_shows_them_once_and_missing_waits_for_the_end(call_rules):
    live = LiveFlags(call_rules, channel_count=2)
    assert live.add(_said("agent", 1.0, "Hello, how can I help you today?")) == []
    assert live.add(_said("customer", 4.0, "My order never arrived.")) == []
    assert live.add(_said("agent", 40.0, "Thank you for calling, I guarantee it ships today.")) == [
        "late:greeting",
        "forbidden:guarantee",
    ]
    assert live.add(_said("customer", 45.0, "This is ridiculous, I am furious.", emotion="angry")) == ["escalation"]
    assert live.add(_said("agent", 50.0, "We guarantee a refund.")) == []  # fired already: said once
    assert not any(flag.startswith("missing:") for flag in live.fired)


def test_a_mono_call_matches_rules_whoever_speaks(call_rules):
    live = LiveFlags(call_rules, channel_count=1)
    assert live.add(_said("speaker", 2.0, "I guarantee you will love it.")) == ["forbidden:guarantee"]
