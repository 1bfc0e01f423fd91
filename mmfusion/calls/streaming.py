"""Per-channel streaming: audio in as it is recorded, closed speech regions (with their audio) out."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmfusion.calls.config import VadParams
from mmfusion.calls.transcribe import SpeechText
from mmfusion.calls.vad import WINDOW, Segmenter, SpeechRegion, StreamingVad
from mmfusion.media import SAMPLE_RATE


@dataclass(frozen=True)
class ClosedRegion:
    """A speech region whose end has been heard, with its padded audio (16 kHz mono)."""

    channel: int
    region: SpeechRegion
    audio: np.ndarray

    @property
    def start(self) -> float:
        return self.region.start / SAMPLE_RATE


class ChannelTracker:
    """One channel: VAD, segmenter, and only as much audio as the open region can still need."""

    def __init__(self, channel: int, params: VadParams) -> None:
        self.channel = channel
        self.vad = StreamingVad()
        self.segmenter = Segmenter(params)
        self.buffer = np.zeros(0, np.float32)
        self.buffer_start = 0  # sample index of buffer[0]
        self.total = 0
        self.speech: list[tuple[float, float]] = []
        self.square_sum = 0.0
        self.speech_samples = 0

    def feed(self, samples: np.ndarray) -> list[ClosedRegion]:
        """Regions closed by these samples."""
        self.buffer = np.concatenate([self.buffer, samples.astype(np.float32, copy=False)])
        self.total += samples.size
        closed = self._close(self.segmenter.push(self.vad.feed(samples)))
        self._trim()
        return closed

    def finish(self) -> list[ClosedRegion]:
        """Regions still open when the audio ends."""
        regions = self.segmenter.push(self.vad.finish())
        return self._close(regions + self.segmenter.finish(self.total))

    def _close(self, regions: list[SpeechRegion]) -> list[ClosedRegion]:
        closed = []
        for region in regions:
            end = min(region.end, self.total)
            audio = self.buffer[max(0, region.start - self.buffer_start) : end - self.buffer_start]
            speech = self.buffer[
                max(0, region.speech_start - self.buffer_start) : region.speech_end - self.buffer_start
            ]
            self.square_sum += float(np.square(speech, dtype=np.float64).sum())
            self.speech_samples += speech.size
            self.speech.append((region.speech_start / SAMPLE_RATE, region.speech_end / SAMPLE_RATE))
            closed.append(ClosedRegion(self.channel, region, audio.copy()))
        return closed

    def _trim(self) -> None:
        # The next region's padded start is never before the open region's start, nor before
        # (its first speech window - pad), which is at least the current window - pad.
        open_start = self.segmenter.open_start
        keep_from = self.segmenter.index * WINDOW - self.segmenter.pad - WINDOW
        if open_start is not None:
            keep_from = min(keep_from, open_start)
        drop = max(0, keep_from - self.buffer_start)
        if drop:
            self.buffer = self.buffer[drop:]
            self.buffer_start += drop

    @property
    def loudness_power(self) -> float | None:
        """Mean square of the speech samples so far; None before any speech."""
        return self.square_sum / self.speech_samples if self.speech_samples else None


class SpokenHistory:
    """The tokens a channel said most recently: whisper's previous-text prompt for its next segment."""

    def __init__(self, keep: int = 224) -> None:
        self.keep = keep
        self.previous: tuple[int, ...] = ()

    def add(self, said: SpeechText) -> None:
        """Record a transcribed segment; one decoded hot (unreliable) resets the prompt, as whisper does."""
        if said.conditions_next:
            self.previous = (self.previous + said.tokens)[-self.keep :]
        elif said.tokens:
            self.previous = ()
