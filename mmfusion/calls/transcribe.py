"""Transcribe speech segments with CTranslate2 whisper: a window sized to the segment, whisper's safeguards, words.

faster-whisper's own `transcribe` always encodes a 30 s window (and a second one to detect the
language). A call segment is usually 1-10 s, so this encodes a window of at least `min_window_s`
(whisper hallucinates on windows much shorter than it was trained on), detects the language on that
same encoder output, and decodes with the safeguards of whisper's transcribe: temperature fallback
on compression ratio and average log-probability, the no-speech threshold, conditioning on the
channel's previous text, a token budget proportional to the audio, and a final guard that drops
phrases repeated in a loop. Words are aligned with faster-whisper's cross-attention alignment.
Several segments (of one call or of concurrent calls) decode as one CTranslate2 batch.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import get_suppressed_tokens, merge_punctuations

from mmfusion.calls.config import AsrParams
from mmfusion.media import SAMPLE_RATE
from mmfusion.types import Word

HOP = 160  # samples per mel frame
PREPEND_PUNCTUATION = "\"'“¿([{-"
APPEND_PUNCTUATION = "\"'.。,，!！?？:：”)]}、"
MAX_NEW_TOKENS = 220
MAX_PROMPT_TOKENS = 223 // 2  # whisper's limit on the previous-text prompt
PROMPT_RESET_TEMPERATURE = 0.5  # a segment decoded hotter than this does not condition the next one


@dataclass(frozen=True)
class SpeechText:
    """What one segment said: text, language (with its probability), timed words (absolute s) and its tokens."""

    text: str
    language: str
    language_probability: float
    words: tuple[Word, ...]
    tokens: tuple[int, ...] = ()
    temperature: float = 0.0

    @property
    def conditions_next(self) -> bool:
        """Whether the next segment of the channel may be conditioned on this one's text."""
        return bool(self.tokens) and self.temperature <= PROMPT_RESET_TEMPERATURE


@dataclass(frozen=True)
class SpeechRequest:
    """One segment to transcribe: 16 kHz mono audio, its start (s) and the tokens its channel said before it."""

    audio: np.ndarray
    offset: float = 0.0
    previous: tuple[int, ...] = ()


@dataclass(frozen=True)
class _Decoded:
    tokens: list[int]
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    temperature: float


def compression_ratio(text: str) -> float:
    """Bytes of the text over bytes of its zlib compression: above ~2.4 the text repeats itself."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def drop_loops(tokens: list[int], max_repeats: int = 2, min_single_repeats: int = 4) -> list[int]:
    """Tokens with every run of one token sequence repeated more than `max_repeats` times cut to one copy.

    A single token repeated fewer than `min_single_repeats` times in a row is kept ("no, no, no").
    """
    out = list(tokens)
    i = 0
    while i < len(out):
        for period in range(1, (len(out) - i) // (max_repeats + 1) + 1):
            unit = out[i : i + period]
            repeats = 1
            while out[i + repeats * period : i + (repeats + 1) * period] == unit:
                repeats += 1
            if repeats > max_repeats and (period > 1 or repeats >= min_single_repeats):
                del out[i + period : i + repeats * period]
                break
        i += 1
    return out


class SegmentTranscriber:
    """Whisper decoding of single segments (<= 30 s), reusing a loaded faster-whisper model."""

    def __init__(self, whisper: WhisperModel, params: AsrParams) -> None:
        self.whisper = whisper
        self.params = params
        self.window_frames = whisper.feature_extractor.nb_max_frames  # 3000
        self.margin_frames = round(params.window_margin_s * SAMPLE_RATE / HOP)
        self.min_frames = round(params.min_window_s * SAMPLE_RATE / HOP)
        self._tokenizers: dict[str, Tokenizer] = {}

    def tokenizer(self, language: str) -> Tokenizer:
        """The (cached) tokenizer whose start sequence names `language`."""
        if language not in self._tokenizers:
            self._tokenizers[language] = Tokenizer(
                self.whisper.hf_tokenizer, self.whisper.model.is_multilingual, task="transcribe", language=language
            )
        return self._tokenizers[language]

    def window(self, samples: int) -> tuple[int, int]:
        """(encoder window frames, the audio's frames) for a segment of `samples`."""
        frames = min(-(-samples // HOP), self.window_frames)
        window = min(self.window_frames, max(self.min_frames, frames + self.margin_frames))
        return window + window % 2, frames  # the encoder halves the frame count

    def features(self, audio: np.ndarray, window: int) -> np.ndarray:
        """Log-mel features (80, window) of `audio` zero-padded to the window."""
        padded = np.zeros(window * HOP, np.float32)
        padded[: min(audio.size, padded.size)] = audio[: padded.size]
        return self.whisper.feature_extractor(padded)[:, :window]  # (80, window)

    def encode(self, audio: np.ndarray) -> tuple[ctranslate2.StorageView, int]:
        """Encoder output of a window covering `audio`, and the audio's frame count."""
        window, frames = self.window(audio.size)
        features = ctranslate2.StorageView.from_array(np.ascontiguousarray(self.features(audio, window)[None]))
        return self.whisper.model.encode(features, to_cpu=False), frames  # (1, window / 2, D)

    def detect_language(self, encoded: ctranslate2.StorageView) -> list[tuple[str, float]]:
        """Each item's most likely language (restricted to `languages` when configured) and its probability."""
        count = encoded.shape[0]
        if self.params.language is not None:
            return [(self.params.language, 1.0)] * count
        if not self.whisper.model.is_multilingual:
            return [("en", 1.0)] * count
        chosen = []
        for scores in self.whisper.model.detect_language(encoded):
            ranked = [(token[2:-2], probability) for token, probability in scores]
            allowed = [pair for pair in ranked if not self.params.languages or pair[0] in self.params.languages]
            chosen.append(allowed[0] if allowed else ranked[0])
        return chosen

    def transcribe(self, audio: np.ndarray, offset: float = 0.0, previous: tuple[int, ...] = ()) -> SpeechText:
        """Text and words of one segment (16 kHz mono); word times are `offset` + seconds into the segment."""
        return self.transcribe_batch([SpeechRequest(audio, offset, previous)])[0]

    def transcribe_batch(self, requests: list[SpeechRequest]) -> list[SpeechText]:
        """Several segments at once: one encoder batch per window size, one decoding batch per temperature."""
        results: list[SpeechText | None] = [None] * len(requests)
        by_window: dict[int, list[int]] = {}
        for index, request in enumerate(requests):
            by_window.setdefault(self.window(request.audio.size)[0], []).append(index)
        for window, indices in by_window.items():
            encoded = self._encode([self.features(requests[i].audio, window) for i in indices])  # (B, window / 2, D)
            for index, text in zip(indices, self._decode(encoded, [requests[i] for i in indices])):
                results[index] = text
        return results  # type: ignore[return-value]

    def _encode(self, features: list[np.ndarray]) -> ctranslate2.StorageView:
        """Encoder outputs (B, window / 2, D) of same-sized windows (80, window), one window at a time.

        CTranslate2's CPU encoder costs more per window in a batch (4 windows of 10 s: 5-6x one), so only
        decoding, where a batch shares every step, is batched.
        """
        if len(features) == 1 or self.whisper.model.device != "cpu":
            return self.whisper.model.encode(ctranslate2.StorageView.from_array(np.stack(features)), to_cpu=False)
        outputs = [
            np.asarray(
                self.whisper.model.encode(
                    ctranslate2.StorageView.from_array(np.ascontiguousarray(f[None])), to_cpu=True
                )
            )
            for f in features
        ]
        return ctranslate2.StorageView.from_array(np.concatenate(outputs))

    def _prompts(self, tokenizers: list[Tokenizer], requests: list[SpeechRequest]) -> list[list[int]]:
        """Each item's prompt; previous texts are cut to one length (CTranslate2 needs <|sot|> aligned)."""
        keep = self.params.condition_on_previous_text
        previous = [r.previous[-MAX_PROMPT_TOKENS:] if keep else () for r in requests]
        common = min((len(p) for p in previous if p), default=0)
        prompts = []
        for tokenizer, tokens in zip(tokenizers, previous):
            context = [tokenizer.sot_prev, *tokens[len(tokens) - common :]] if tokens else []
            prompts.append([*context, *tokenizer.sot_sequence, tokenizer.no_timestamps])
        return prompts

    def _decode(self, encoded: ctranslate2.StorageView, requests: list[SpeechRequest]) -> list[SpeechText]:
        languages = self.detect_language(encoded)
        tokenizers = [self.tokenizer(language) for language, _ in languages]
        prompts = self._prompts(tokenizers, requests)
        budgets = [
            min(MAX_NEW_TOKENS, 8 + round(self.params.tokens_per_second * r.audio.size / SAMPLE_RATE)) for r in requests
        ]
        groups: dict[int, list[int]] = {}  # prompts with and without previous text decode apart
        for index, prompt in enumerate(prompts):
            groups.setdefault(len(prompt), []).append(index)
        decoded: dict[int, _Decoded] = {}
        for indices in groups.values():
            decoded.update(self._with_fallback(encoded, indices, prompts, budgets, tokenizers))
        out = []
        for index, (request, tokenizer) in enumerate(zip(requests, tokenizers)):
            result = decoded[index]
            language, language_probability = languages[index]
            tokens = drop_loops([t for t in result.tokens if t < tokenizer.eot])
            silent = result.no_speech_prob > self.params.no_speech_threshold and (
                result.avg_logprob < self.params.log_prob_threshold
            )
            if not tokens or silent:
                out.append(SpeechText("", language, language_probability, (), (), result.temperature))
                continue
            words = self._words(tokenizer, tokens, encoded, index, request)
            text = tokenizer.decode(tokens).strip()
            out.append(SpeechText(text, language, language_probability, words, tuple(tokens), result.temperature))
        return out

    def _with_fallback(
        self,
        encoded: ctranslate2.StorageView,
        indices: list[int],
        prompts: list[list[int]],
        budgets: list[int],
        tokenizers: list[Tokenizer],
    ) -> dict[int, _Decoded]:
        """whisper's temperature fallback for batch items `indices`: re-decode hotter while repetitive or unlikely."""
        params = self.params
        pending = list(indices)
        tried: dict[int, list[_Decoded]] = {i: [] for i in pending}
        final: dict[int, _Decoded] = {}
        for temperature in params.temperatures:
            if not pending:
                break
            sampling = {"beam_size": 1, "sampling_topk": 0, "sampling_temperature": temperature}
            results = self.whisper.model.generate(
                _select(encoded, pending),
                [prompts[i] for i in pending],
                max_length=max(len(prompts[i]) + budgets[i] for i in pending),  # prompt included
                return_scores=True,
                return_no_speech_prob=True,
                suppress_blank=True,
                suppress_tokens=get_suppressed_tokens(tokenizers[pending[0]], [-1]),
                **(sampling if temperature > 0 else {"beam_size": params.beam_size}),
            )
            still = []
            for index, result in zip(pending, results):
                generated = result.sequences_ids[0]
                tokens = generated[: budgets[index]]
                avg_logprob = result.scores[0] * len(generated) / (len(generated) + 1)
                text = tokenizers[index].decode([t for t in tokens if t < tokenizers[index].eot])
                attempt = _Decoded(tokens, avg_logprob, compression_ratio(text), result.no_speech_prob, temperature)
                tried[index].append(attempt)
                too_repetitive = attempt.compression_ratio > params.compression_ratio_threshold
                unlikely = avg_logprob < params.log_prob_threshold
                silence = attempt.no_speech_prob > params.no_speech_threshold and unlikely
                truncated = len(generated) >= budgets[index]  # still talking at the budget: a loop
                if (too_repetitive or unlikely or truncated) and not silence:
                    still.append(index)
                else:
                    final[index] = attempt
            pending = still
        for index in pending:  # every temperature failed: the most likely of the non-repetitive attempts
            candidates = [a for a in tried[index] if a.compression_ratio <= params.compression_ratio_threshold]
            final[index] = max(candidates or tried[index], key=lambda a: a.avg_logprob)
        return final

    def _words(
        self,
        tokenizer: Tokenizer,
        tokens: list[int],
        encoded: ctranslate2.StorageView,
        index: int,
        request: SpeechRequest,
    ) -> tuple[Word, ...]:
        frames = min(-(-request.audio.size // HOP), self.window_frames)
        alignment = self.whisper.find_alignment(tokenizer, [tokens], _select(encoded, [index]), frames)[0]
        merge_punctuations(alignment, PREPEND_PUNCTUATION, APPEND_PUNCTUATION)
        limit = frames * HOP / SAMPLE_RATE
        return tuple(
            Word(
                word=timing["word"].strip(),
                start=round(request.offset + min(float(timing["start"]), limit), 3),
                end=round(request.offset + min(float(timing["end"]), limit), 3),
                probability=float(timing["probability"]),
            )
            for timing in alignment
            if timing["word"].strip()
        )


def _select(encoded: ctranslate2.StorageView, indices: list[int]) -> ctranslate2.StorageView:
    """The encoder outputs of the given batch items (the same view when all are selected)."""
    if indices == list(range(encoded.shape[0])):
        return encoded
    array = np.asarray(encoded if encoded.device == "cpu" else encoded.to_device(ctranslate2.Device.cpu))
    return ctranslate2.StorageView.from_array(np.ascontiguousarray(array[indices]))
