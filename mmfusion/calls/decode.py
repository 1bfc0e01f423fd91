"""Decode call audio keeping its channels: PCM16 at any common rate, WAV, FLAC, ... -> (C, N) float32 at 16 kHz."""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np

from mmfusion.media import (
    MAX_AUDIO_SECONDS,
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    SAMPLE_RATE,
    check_pcm16,
    check_wav_header,
    decoded_frames,
    open_audio,
)
from mmfusion.types import InputError

MAX_CHANNELS = 2  # agent + customer; more channels are mixed down to these two by the decoder
SAME_SIGNAL_CORRELATION = 0.95  # two channels this correlated carry one speaker stream
AUDIBLE_RMS = 1e-3  # a channel quieter than this (about -60 dBFS) carries no signal
PCM16 = 1  # pb.AUDIO_ENCODING_PCM16, without importing the proto here


@dataclass(frozen=True)
class CallAudio:
    """A call's audio: `channels` (C, N) float32 in [-1, 1] at 16 kHz, C = 1 (mono) or 2 (stereo)."""

    channels: np.ndarray
    source_sample_rate: int

    @property
    def duration(self) -> float:
        return self.channels.shape[1] / SAMPLE_RATE

    @property
    def channel_count(self) -> int:
        return self.channels.shape[0]


def _checked(channels: np.ndarray, name: str, source_rate: int, max_seconds: float) -> CallAudio:
    if channels.shape[1] == 0:
        raise InputError(f"{name}: decoded to no audio samples; expected at least one sample")
    if channels.shape[1] > max_seconds * SAMPLE_RATE:
        raise InputError(
            f"{name}: {channels.shape[1] / SAMPLE_RATE:.1f} s of audio; expected at most {max_seconds:.0f} s"
        )
    if not np.isfinite(channels).all():
        raise InputError(f"{name}: audio has NaN or infinite samples")
    return CallAudio(np.ascontiguousarray(channels, dtype=np.float32), source_rate)


def same_signal(channels: np.ndarray) -> bool | None:
    """Whether the two channels (2, N) carry the same signal (a mono call recorded as stereo); None: both silent."""
    loud = np.sqrt(np.square(channels, dtype=np.float64).mean(1))  # (2,) RMS
    if loud.max() < AUDIBLE_RMS:
        return None
    if loud.min() < AUDIBLE_RMS:
        return False
    return bool(np.corrcoef(channels.astype(np.float64))[0, 1] > SAME_SIGNAL_CORRELATION)


def resample(channels: np.ndarray, rate: int) -> np.ndarray:
    """(C, N) samples at `rate` -> (C, M) at 16 kHz (polyphase filter)."""
    if rate == SAMPLE_RATE:
        return channels
    from scipy.signal import resample_poly

    common = gcd(rate, SAMPLE_RATE)
    return resample_poly(channels, SAMPLE_RATE // common, rate // common, axis=1).astype(np.float32)  # (C, M)


def decode_pcm16(data: bytes, sample_rate: int, channels: int, name: str = "audio") -> np.ndarray:
    """Raw little-endian PCM16 with interleaved channels -> (C, N) float32 at 16 kHz."""
    channels = check_pcm16(data, sample_rate, channels, name)
    samples = np.frombuffer(data, "<i2").reshape(-1, channels).T.astype(np.float32) / 32768.0  # (C, N)
    if channels > MAX_CHANNELS:
        samples = samples.mean(0, keepdims=True)  # (1, N): no speaker mapping for more than two channels
    return resample(samples, sample_rate)


def _decode_container(data: bytes, name: str, max_seconds: float) -> tuple[np.ndarray, int]:
    """A container (WAV, FLAC, MP3, OGG, ...) -> ((C, N) float32 at 16 kHz, the source sample rate).

    Refused before decoding when its header declares more than max_seconds, and as soon as the decoded
    samples pass max_seconds (a header that lies or says nothing).
    """
    import av

    with open_audio(data, name, max_seconds) as (container, stream):
        source_rate = stream.codec_context.sample_rate or SAMPLE_RATE
        layout = "stereo" if stream.codec_context.channels == MAX_CHANNELS else "mono"
        resampler = av.audio.resampler.AudioResampler(format="fltp", layout=layout, rate=SAMPLE_RATE)
        pieces = list(decoded_frames(container, stream, resampler, name, max_seconds))
    channels = 2 if layout == "stereo" else 1
    if not pieces:
        return np.zeros((channels, 0), np.float32), source_rate
    return np.concatenate(pieces, axis=1).astype(np.float32), source_rate  # (C, N)


def decode_call_audio(
    source: bytes | str | Path,
    encoding: int = 0,
    sample_rate: int = 0,
    channels: int = 0,
    name: str = "audio",
    max_seconds: float = MAX_AUDIO_SECONDS,
) -> CallAudio:
    """Bytes or a file (PCM16 with its rate and channel count, or any container) as CallAudio; errors name `name`."""
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.is_file():
            raise InputError(f"{name} file {str(path)!r} does not exist")
        source = path.read_bytes()
    if not source:
        raise InputError(f"{name}.data: empty; expected PCM16 samples or an audio file (WAV, FLAC, ...)")
    if encoding == PCM16:
        samples = decode_pcm16(source, sample_rate, channels, name)
        return _checked(samples, name, sample_rate, max_seconds)
    if sample_rate and not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise InputError(f"{name}.sample_rate: {sample_rate} Hz; expected {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz")
    check_wav_header(source, name, max_seconds)
    try:
        samples, source_rate = _decode_container(source, name, max_seconds)
    except InputError:
        raise
    except Exception as error:  # PyAV raises many types for undecodable data
        raise InputError(
            f"{name}: {len(source)} bytes are not decodable audio (WAV, FLAC, MP3, OGG, ...): {type(error).__name__}"
        ) from None
    return _checked(samples, name, source_rate, max_seconds)
