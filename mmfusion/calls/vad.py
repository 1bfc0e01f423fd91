"""Streaming voice activity detection: faster-whisper's Silero VAD run window by window, and a segmenter.

Silero reads 512-sample windows (32 ms at 16 kHz) with the previous window's last 64 samples as
context and carries an LSTM state; both are kept here between calls, so feeding a channel in
chunks of any size gives exactly the speech probabilities of feeding it whole. The segmenter only
closes a region once `min_silence_ms` of silence follows it, so its decisions never depend on how
the audio was chunked either.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmfusion.calls.config import VadParams
from mmfusion.media import SAMPLE_RATE

WINDOW = 512
CONTEXT = 64
STATE_SHAPE = (1, 1, 128)
WINDOW_SECONDS = WINDOW / SAMPLE_RATE


class StreamingVad:
    """Silero VAD (v6, ONNX) over a stream: feed samples, get one speech probability per completed window."""

    def __init__(self) -> None:
        from faster_whisper.vad import get_vad_model

        self.session = get_vad_model().session
        self.state_h = np.zeros(STATE_SHAPE, np.float32)
        self.state_c = np.zeros(STATE_SHAPE, np.float32)
        self.context = np.zeros(CONTEXT, np.float32)
        self.pending = np.zeros(0, np.float32)

    def feed(self, samples: np.ndarray) -> np.ndarray:
        """Speech probabilities (W,) of the windows completed by these samples."""
        joined = np.concatenate([self.pending, samples.astype(np.float32, copy=False)])
        count = joined.size // WINDOW
        self.pending = joined[count * WINDOW :]
        if count == 0:
            return np.zeros(0, np.float32)
        windows = joined[: count * WINDOW].reshape(count, WINDOW)  # (W, 512)
        contexts = np.concatenate([self.context[None], windows[:-1, -CONTEXT:]], axis=0)  # (W, 64)
        self.context = windows[-1, -CONTEXT:].copy()
        batch = np.concatenate([contexts, windows], axis=1)  # (W, 576)
        output, self.state_h, self.state_c = self.session.run(
            None, {"input": batch, "h": self.state_h, "c": self.state_c}
        )
        return np.asarray(output, np.float32).reshape(-1)  # (W,)

    def finish(self) -> np.ndarray:
        """Probabilities of the last, zero-padded partial window (empty when nothing is pending)."""
        if self.pending.size == 0:
            return np.zeros(0, np.float32)
        return self.feed(np.zeros(WINDOW - self.pending.size, np.float32))


@dataclass(frozen=True)
class SpeechRegion:
    """One stretch of speech in samples: `speech_*` as detected, `start`/`end` with padding (for transcription)."""

    speech_start: int
    speech_end: int
    start: int
    end: int


class Segmenter:
    """Hysteresis over speech probabilities (as Silero's own get_speech_timestamps), emitting closed regions."""

    def __init__(self, params: VadParams) -> None:
        self.params = params
        self.threshold = params.threshold
        self.negative_threshold = max(params.threshold - 0.15, 0.01)
        self.min_silence = params.min_silence_ms / 1000 / WINDOW_SECONDS  # windows
        self.min_speech = params.min_speech_ms / 1000 / WINDOW_SECONDS
        self.max_speech = params.max_speech_s / WINDOW_SECONDS
        self.pad = round(params.speech_pad_ms / 1000 * SAMPLE_RATE)  # samples
        self.index = 0  # windows seen
        self.start: int | None = None  # window where the open region's speech began
        self.silence_from: int | None = None
        self.previous_end = 0  # speech end (samples) of the last region, so paddings never overlap

    @property
    def open_start(self) -> int | None:
        """The padded start (samples) of the region being spoken now, if any."""
        return None if self.start is None else max(self.previous_end, self.start * WINDOW - self.pad)

    def push(self, probabilities: np.ndarray) -> list[SpeechRegion]:
        """Regions closed by these window probabilities."""
        closed = []
        for probability in probabilities:
            region = self._step(float(probability))
            if region is not None:
                closed.append(region)
            self.index += 1
        return closed

    def _step(self, probability: float) -> SpeechRegion | None:
        index = self.index
        if self.start is None:
            if probability >= self.threshold:
                self.start, self.silence_from = index, None
            return None
        if probability >= self.threshold:
            self.silence_from = None
        elif probability < self.negative_threshold and self.silence_from is None:
            self.silence_from = index
        if self.silence_from is not None and index - self.silence_from >= self.min_silence:
            return self._close(self.silence_from, None)
        if index - self.start >= self.max_speech:
            # Too long for one whisper window: split here; speech goes on in a new region.
            return self._close(index, index)
        return None

    def _close(self, end_window: int, restart: int | None, total_samples: int | None = None) -> SpeechRegion | None:
        start_window, self.start, self.silence_from = self.start, restart, None
        if end_window - start_window < self.min_speech:
            return None
        speech_start, speech_end = start_window * WINDOW, end_window * WINDOW
        if total_samples is not None:
            speech_end = min(speech_end, total_samples)
        padded_start = max(self.previous_end, speech_start - self.pad)
        padded_end = speech_end + self.pad if restart is None else speech_end
        if total_samples is not None:
            padded_end = min(padded_end, total_samples)
        self.previous_end = speech_end
        return SpeechRegion(speech_start, speech_end, padded_start, padded_end)

    def finish(self, total_samples: int) -> list[SpeechRegion]:
        """Close the region still open at the end of the audio."""
        if self.start is None:
            return []
        end = self.silence_from if self.silence_from is not None else self.index
        region = self._close(end, None, total_samples)
        return [region] if region is not None else []
