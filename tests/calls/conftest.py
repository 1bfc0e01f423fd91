"""Shared fixtures: the call-centre analyzer (embedded whisper base + MiniLM) and real speech clips."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile

from mmfusion.calls.call import CallAnalyzer, call_analyzer
from mmfusion.media import SAMPLE_RATE, decode_audio
from mmfusion.pipeline import Pipeline
from tests.conftest import SAMPLES

CLIP = SAMPLES / "sense_and_sensibility_01_austen_64kb-0870.wav"  # 7.1 s, speech 0.3-6.8 s


@pytest.fixture(scope="session")
def call_pipeline() -> Pipeline:
    return Pipeline("call-centre")


@pytest.fixture(scope="session")
def analyzer(call_pipeline) -> CallAnalyzer:
    return call_analyzer(call_pipeline)


@pytest.fixture(scope="session")
def clip() -> np.ndarray:
    return decode_audio(CLIP)


def speech_span(waveform: np.ndarray) -> tuple[float, float]:
    """(first, last) second where the clip's 20 ms energy passes 10% of its peak: the spoken part."""
    frames = waveform[: waveform.size // 320 * 320].reshape(-1, 320)  # (F, 320)
    energy = np.sqrt((frames**2).mean(1))  # (F,)
    loud = np.flatnonzero(energy > 0.1 * energy.max())
    return loud[0] * 0.02, (loud[-1] + 1) * 0.02


def wav_bytes(channels: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    """(C, N) float samples as 16-bit WAV bytes."""
    buffer = io.BytesIO()
    soundfile.write(buffer, np.asarray(channels).T, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()
