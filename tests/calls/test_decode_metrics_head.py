"""Bad audio gets clear errors, channels survive decoding, metrics from intervals, the fusion head fits and reloads."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from mmfusion.calls.decode import PCM16, decode_call_audio
from mmfusion.calls.metrics import call_metrics
from mmfusion.config import ConfigError, HeadSpec
from mmfusion.fitting.call_labels import fit_call_labels
from mmfusion.heads.audio import CallLabelsHead, CallLabelsParams
from mmfusion.media import decode_audio
from mmfusion.types import Embedding, InputError
from tests.calls.conftest import wav_bytes


def wav_claiming(seconds: float, rate: int = 16000) -> bytes:
    """A short real WAV whose header claims `seconds` of audio (data size) at `rate`."""
    data = wav_bytes(np.zeros((1, 1600), np.float32))
    header = bytearray(data[:44])
    header[24:28] = struct.pack("<I", rate)
    header[28:32] = struct.pack("<I", rate * 2)
    header[40:44] = struct.pack("<I", int(seconds * rate * 2))
    return bytes(header) + data[44:]


@pytest.mark.parametrize(
    ("data", "options", "message"),
    [
        (b"", {}, r"audio\.data: empty"),
        (b"this is a text file, not audio" * 20, {}, "not decodable audio"),
        (b"\x00\x01" * 800, {"encoding": PCM16, "sample_rate": 1}, r"sample_rate: 1 Hz; PCM16 needs 8000\.\.192000 Hz"),
        (b"\x00\x01" * 801, {"encoding": PCM16, "sample_rate": 16000, "channels": 2}, "not a whole number"),
        (wav_claiming(0.1, rate=3), {}, "WAV header sample rate 3 Hz"),
        (wav_claiming(10 * 3600), {}, r"WAV header claims 36000\.0 s of audio; expected at most 14400 s"),
    ],
)
def test_bad_audio_is_refused_with_a_clear_error(data, options, message):
    with pytest.raises(InputError, match=message):
        decode_call_audio(data, **options)


def test_ten_hour_claim_refused_by_the_mono_decoder_too():
    with pytest.raises(InputError, match="claims 36000.0 s"):
        decode_audio(wav_claiming(10 * 3600))


def test_channels_survive_and_rates_are_resampled():
    time = np.arange(8000) / 8000
    left, right = 0.5 * np.sin(2 * np.pi * 300 * time), np.zeros_like(time)
    pcm = (np.stack([left, right], 1) * 32767).astype("<i2").tobytes()
    from_pcm = decode_call_audio(pcm, encoding=PCM16, sample_rate=8000, channels=2)
    from_wav = decode_call_audio(wav_bytes(np.stack([left, right]), rate=8000))
    for audio in (from_pcm, from_wav):
        assert audio.channels.shape == (2, 16000) and audio.source_sample_rate == 8000
        assert np.abs(audio.channels[1]).max() < 1e-3 < np.abs(audio.channels[0]).max()


def test_call_metrics_from_intervals():
    speech = {"agent": [(0.0, 4.0), (10.0, 12.0)], "customer": [(3.0, 6.0), (6.5, 8.0)]}
    metrics = call_metrics(speech, {"agent": 12, "customer": 9}, {"agent": -20.0, "customer": -25.0}, 13.0)
    assert metrics["talk_seconds"] == {"agent": 6.0, "customer": 4.5}
    assert metrics["talk_ratio"]["agent"] == pytest.approx(6 / 10.5, abs=1e-4)
    assert metrics["longest_silence_seconds"] == 2.0 and metrics["longest_silence_start"] == 8.0
    assert metrics["overlap_count"] == 1 and metrics["overlap_seconds"] == 1.0
    assert metrics["interruptions"] == {"agent": 0, "customer": 1}
    assert metrics["words_per_minute"] == {"agent": 120.0, "customer": 120.0}


def test_call_labels_head_fits_saves_and_reloads(tmp_path):
    spec = HeadSpec(name="call_labels", labels=["billing", "cancellation"])
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(2, 16, generator=generator) * 3  # (C, D)
    targets = torch.arange(40) % 2  # (N,)
    pooled = centres[targets] + torch.randn(40, 16, generator=generator)  # (N, D)
    head = CallLabelsHead(CallLabelsParams(hidden=8), 16, spec)
    assert not head.fitted
    fit_call_labels(head, pooled, [spec.labels[i] for i in targets])
    results = head.postprocess({"probabilities": head(Embedding.from_pooled(pooled))["probabilities"].detach().numpy()})
    assert [r["label"] for r in results] == [spec.labels[i] for i in targets]
    head.save_fitted(tmp_path / "intent")
    reloaded = CallLabelsHead(CallLabelsParams(hidden=8), 16, spec).eval()
    reloaded.load_fitted(tmp_path / "intent")
    assert reloaded.fitted
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(Embedding.from_pooled(pooled))["probabilities"],
            head(Embedding.from_pooled(pooled))["probabilities"],
        )
    other = CallLabelsHead(CallLabelsParams(hidden=8), 16, HeadSpec(name="call_labels", labels=["a", "b"]))
    with pytest.raises(ConfigError, match="fitted for labels"):
        other.load_fitted(tmp_path / "intent")
