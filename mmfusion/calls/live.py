"""A call while it goes on: raw PCM16 chunks to 16 kHz samples, and the flags that fire as segments come in.

`PcmStream` decodes little-endian interleaved PCM16 chunk by chunk; other rates go through one PyAV
(libswresample) resampler kept for the whole call, so chunking never changes the samples.
`LiveFlags` runs the call's compliance check over the segments so far after each new one, and reports
the flags that fired with it: `forbidden:<rule>`, `late:<rule>` and `escalation`. `missing:<rule>` is
only known once the call ended (CallAnalysis.flags has it). The language that picks the phrase lists
is the majority so far, so the final flags may still differ from what fired live.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from mmfusion.calls.call import CallAnalyzer, Segment
from mmfusion.calls.compliance import Utterance, check_compliance
from mmfusion.calls.labels import escalation_points
from mmfusion.media import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, SAMPLE_RATE
from mmfusion.types import InputError

LIVE_CHANNELS = (1, 2)  # mono, or agent + customer
FINAL_ONLY = "missing:"  # flags that only the end of a call can tell


class PcmStream:
    """PCM16 chunks (little-endian, channels interleaved) at `sample_rate` -> (C, n) float32 at 16 kHz."""

    def __init__(self, sample_rate: int, channels: int, name: str = "config") -> None:
        if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
            raise InputError(
                f"{name}.sample_rate: {sample_rate} Hz; PCM16 needs {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz"
            )
        if channels not in LIVE_CHANNELS:
            raise InputError(f"{name}.channels: {channels}; expected 1 (mono) or 2 (agent and customer)")
        self.sample_rate = sample_rate
        self.channels = channels
        self.frame_bytes = 2 * channels
        self.resampler = None
        if sample_rate != SAMPLE_RATE:
            import av

            layout = "stereo" if channels == 2 else "mono"
            self.resampler = av.audio.resampler.AudioResampler(format="fltp", layout=layout, rate=SAMPLE_RATE)

    def push(self, data: bytes, name: str = "audio") -> np.ndarray:
        """The 16 kHz samples (C, n) of the next chunk; n may be 0 (the resampler holds a few samples back)."""
        if len(data) % self.frame_bytes:
            raise InputError(
                f"{name}: {len(data)} bytes is not a whole number of {self.channels}-channel PCM16 frames "
                f"({self.frame_bytes} bytes each)"
            )
        samples = np.frombuffer(data, "<i2")
        if self.resampler is None:
            return samples.reshape(-1, self.channels).T.astype(np.float32) / 32768.0  # (C, n)
        import av

        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout=self.resampler.layout)
        frame.sample_rate = self.sample_rate
        return self._joined(self.resampler.resample(frame))

    def flush(self) -> np.ndarray:
        """The samples the resampler still holds (C, n), at the end of the call."""
        if self.resampler is None:
            return np.zeros((self.channels, 0), np.float32)
        return self._joined(self.resampler.resample(None))

    def _joined(self, frames) -> np.ndarray:
        pieces = [frame.to_ndarray() for frame in frames]  # each (C, n) float32
        if not pieces:
            return np.zeros((self.channels, 0), np.float32)
        return np.concatenate(pieces, axis=1).astype(np.float32, copy=False)  # (C, n)


class LiveFlags:
    """The flags a call in progress has fired, each reported once: with the segment that fired it."""

    def __init__(self, analyzer: CallAnalyzer, channel_count: int) -> None:
        self.analyzer = analyzer
        self.stereo = channel_count == 2
        self.segments: list[Segment] = []
        self.fired: set[str] = set()

    def add(self, segment: Segment) -> list[str]:
        """Add a segment that just ended; the flags that fired with it (in the call's flag order)."""
        self.segments.append(segment)
        new = [flag for flag in self.flags_so_far() if flag not in self.fired]
        self.fired.update(new)
        return new

    def flags_so_far(self) -> list[str]:
        """Compliance flags of the segments so far (as the summary computes them) that no later audio can undo."""
        config = self.analyzer.config
        spoken = sorted((s for s in self.segments if s.text), key=lambda s: (s.start, s.channel))
        languages: Counter = Counter()
        for segment in spoken:
            languages[segment.language] += segment.end - segment.start
        language = languages.most_common(1)[0][0] if languages else (config.asr.language or "")
        report = check_compliance(
            [Utterance(s.speaker, s.start, s.text) for s in spoken],
            self.analyzer.phrase_lists,
            language,
            speakers_known=self.stereo,
            roles={"agent": config.agent, "customer": config.customer},
        )
        flags = [flag for flag in report.flags if not flag.startswith(FINAL_ONLY)]
        task = config.escalation
        if task is not None:
            decisive = [s for s in spoken if not self.stereo or s.speaker == config.customer]
            emotions = [
                (index, s.start, s.text, s.labels[task]) for index, s in enumerate(decisive) if task in s.labels
            ]
            if escalation_points(emotions, set(self.analyzer.label_sets[task].negative)):
                flags.append("escalation")
        return flags
