"""Call analysis: channels -> speakers, streamed segments with transcripts and labels, then call-level results."""

from __future__ import annotations

import threading
import weakref
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mmfusion.calls.batching import SpeechBatcher
from mmfusion.calls.compliance import ComplianceReport, Utterance, check_compliance
from mmfusion.calls.config import CallConfig, LabelSet, PhraseList, load_call_config, load_yaml_model
from mmfusion.calls.decode import CallAudio, decode_call_audio, same_signal
from mmfusion.calls.labels import Escalation, LabelResult, ZeroShotLabeller, combine, escalation_points
from mmfusion.calls.metrics import call_metrics
from mmfusion.calls.streaming import ChannelTracker, ClosedRegion, SpokenHistory
from mmfusion.calls.transcribe import SegmentTranscriber, SpeechRequest
from mmfusion.config import ConfigError
from mmfusion.media import SAMPLE_RATE
from mmfusion.security.integrity import verified_reads
from mmfusion.types import InputError, Inputs, Modality, Transcript, Word

EMBEDDED_TEXTS = 256  # recent texts whose embeddings are kept (every label task of a segment reuses one)
PROBE_MIN_SECONDS = 1.0  # stereo audio heard before deciding whether its channels are one signal
PROBE_SECONDS = 5.0  # the longest a stereo call is held to decide (silence until then)


@dataclass(frozen=True)
class Segment:
    """One speaker turn: who, when (s), what was said, in which language, its words and its labels."""

    speaker: str
    channel: int
    start: float
    end: float
    text: str
    language: str
    words: tuple[Word, ...] = ()
    labels: dict[str, LabelResult] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "speaker": self.speaker,
            "channel": self.channel,
            "start": round(self.start, 2),
            "end": round(self.end, 2),
            "text": self.text,
            "language": self.language,
            "labels": {task: {"label": r.label, "score": round(r.score, 4)} for task, r in self.labels.items()},
            "words": [
                {"word": w.word, "start": w.start, "end": w.end, "probability": round(w.probability, 3)}
                for w in self.words
            ],
        }


@dataclass(frozen=True)
class CallAnalysis:
    """Everything known about a call once it ended."""

    duration: float
    speakers: tuple[str, ...]
    language: str
    segments: tuple[Segment, ...]
    labels: dict[str, LabelResult]
    escalations: tuple[Escalation, ...]
    compliance: ComplianceReport
    metrics: dict

    def transcript(self) -> Transcript:
        """All speakers' words in time order, the text segment by segment."""
        words = sorted((w for s in self.segments for w in s.words), key=lambda w: (w.start, w.end))
        text = " ".join(s.text for s in self.segments if s.text)
        return Transcript(text=text, language=self.language, words=tuple(words))

    @property
    def flags(self) -> list[str]:
        """Compliance flags, plus `escalation` when the customer's emotion turned negative."""
        return self.compliance.flags + (["escalation"] if self.escalations else [])

    def to_dict(self) -> dict:
        return {
            "duration": round(self.duration, 2),
            "speakers": list(self.speakers),
            "language": self.language,
            "segments": [segment.to_dict() for segment in self.segments],
            "labels": {task: result.to_dict() for task, result in self.labels.items()},
            "escalations": [e.to_dict() for e in self.escalations],
            "flags": self.flags,
            "compliance": self.compliance.to_dict(),
            "metrics": self.metrics,
        }


class CallAnalyzer:
    """Runs calls through a loaded call-centre pipeline: its whisper model, text encoder and label heads."""

    def __init__(self, pipeline, config: CallConfig) -> None:
        self.pipeline = pipeline
        self.config = config
        source = Path(pipeline.model_dir) / "call.yaml"
        audio_encoder = pipeline.graph.encoders[Modality.AUDIO.value] if Modality.AUDIO in pipeline.modalities else None
        if audio_encoder is None or not hasattr(audio_encoder, "transcribe"):
            raise ConfigError(
                f"{source}: call analysis needs an audio encoder that transcribes (speech.faster_whisper)"
            )
        if Modality.TEXT not in pipeline.modalities:
            raise ConfigError(f"{source}: call analysis needs a text encoder (text.hf) for its labels")
        self.transcriber = SegmentTranscriber(audio_encoder.model, config.asr)
        workers = audio_encoder.params.num_workers  # whisper replicas: one batch each at a time
        self.batcher = SpeechBatcher(self.transcriber, workers=workers)  # segments of concurrent calls decode together
        self.text_encoder = pipeline.graph.encoders[Modality.TEXT.value]
        self._embedded: dict[str, np.ndarray] = {}  # the latest texts' embeddings, oldest first
        self._embedding = threading.Lock()  # concurrent calls share the cache
        self.label_sets: dict[str, LabelSet] = {}
        self.zero_shot: dict[str, ZeroShotLabeller] = {}
        for task, spec in config.labels.items():
            label_set = load_yaml_model(LabelSet, spec.label_set)
            self._check_head(source, task, spec.head, label_set)
            self.label_sets[task] = label_set
            self.zero_shot[task] = ZeroShotLabeller(label_set, self.embed, spec.temperature)
        self.phrase_lists = [load_yaml_model(PhraseList, path) for path in config.compliance]

    def _check_head(self, source: Path, task: str, head_name: str | None, label_set: LabelSet) -> None:
        if head_name is None:
            return
        heads = self.pipeline.config.heads
        if head_name not in heads:
            raise ConfigError(f"{source}: labels.{task}.head {head_name!r} is not a head of config.yaml: {list(heads)}")
        if list(heads[head_name].labels) != list(label_set.labels):
            raise ConfigError(
                f"{source}: labels.{task}: head {head_name!r} has labels {heads[head_name].labels} but its label set "
                f"has {list(label_set.labels)}; list the same labels in the same order"
            )

    @torch.inference_mode()
    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length sentence embeddings (B, D) of texts; a segment's text is embedded once for all its tasks."""
        with self._embedding:
            known = {text: self._embedded[text] for text in texts if text in self._embedded}
        missing = [text for text in dict.fromkeys(texts) if text not in known]
        if missing:
            pooled = self.text_encoder.encode(missing).pooled  # (M, D)
            known.update(zip(missing, torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()))
            with self._embedding:
                self._embedded.update((text, known[text]) for text in missing)
                while len(self._embedded) > EMBEDDED_TEXTS:
                    self._embedded.pop(next(iter(self._embedded)))
        return np.stack([known[text] for text in texts])  # (B, D)

    def speaker_of(self, channel: int, channel_count: int) -> str:
        return self.config.channels[channel] if channel_count == 2 else self.config.mono_speaker

    def label(self, text: str, audio: np.ndarray) -> dict[str, LabelResult]:
        """Each task's labels for one segment: the fitted fusion head when there is one, else zero-shot."""
        if not text:
            return {}
        results = {}
        for task, spec in self.config.labels.items():
            head = self.pipeline.graph.heads[spec.head] if spec.head is not None else None
            if head is not None and getattr(head, "fitted", False):
                outputs = self.pipeline.raw_outputs([Inputs(audio=audio, text=text)])
                probabilities = outputs[f"{spec.head}.probabilities"][0]
                results[task] = LabelResult.from_probabilities(list(self.label_sets[task].labels), probabilities)
            else:
                results[task] = self.zero_shot[task].classify([text])[0]
        return results

    def segments(
        self, closed: list[ClosedRegion], channel_count: int, history: dict[int, SpokenHistory]
    ) -> list[Segment]:
        """Transcribe and label closed speech regions (one whisper batch), each prompted with its channel's text."""
        spoken = [history.setdefault(region.channel, SpokenHistory()) for region in closed]
        said = self.batcher.transcribe(
            [SpeechRequest(region.audio, region.start, h.previous) for region, h in zip(closed, spoken)]
        )
        for h, text in zip(spoken, said):
            h.add(text)
        out = []
        for region, text in zip(closed, said):
            out.append(
                Segment(
                    speaker=self.speaker_of(region.channel, channel_count),
                    channel=region.channel,
                    start=region.region.speech_start / 16000,
                    end=region.region.speech_end / 16000,
                    text=text.text,
                    language=text.language,
                    words=text.words,
                    labels=self.label(text.text, region.audio),
                )
            )
        return out

    def stream(self, channel_count: int) -> CallStream:
        """A live call: feed audio as it is recorded, get segments as they end."""
        return CallStream(self, channel_count)

    def analyze(self, audio: CallAudio) -> CallAnalysis:
        """A whole recording at once (the same path as streaming it)."""
        stream = self.stream(audio.channel_count)
        stream.feed(audio.channels)
        return stream.finish()

    def analyze_file(self, source: str | Path | bytes) -> CallAnalysis:
        """Decode a file (keeping its channels) and analyse it."""
        return self.analyze(decode_call_audio(source, name="audio", max_seconds=self.config.max_seconds))

    def conclude(self, segments: list[Segment], trackers: list[ChannelTracker], duration: float) -> CallAnalysis:
        """Call-level labels, escalations, compliance and metrics of a finished call."""
        segments = sorted(segments, key=lambda s: (s.start, s.channel))
        stereo = len(trackers) == 2
        speakers = tuple(self.speaker_of(t.channel, len(trackers)) for t in trackers)
        spoken = [s for s in segments if s.text]
        languages = Counter()
        for s in spoken:
            languages[s.language] += s.end - s.start
        language = languages.most_common(1)[0][0] if languages else (self.config.asr.language or "")
        decisive = [s for s in spoken if not stereo or s.speaker == self.config.customer]
        labels = {}
        for task, label_set in self.label_sets.items():
            chosen = decisive if label_set.applies_to is None or stereo else spoken
            chosen = [s for s in chosen if task in s.labels] or [s for s in spoken if task in s.labels]
            result = combine(
                [s.labels[task] for s in chosen], [s.end - s.start for s in chosen], list(label_set.labels)
            )
            if result is not None:
                labels[task] = result
        escalations: list[Escalation] = []
        if self.config.escalation is not None:
            task = self.config.escalation
            emotions = [(segments.index(s), s.start, s.text, s.labels[task]) for s in decisive if task in s.labels]
            escalations = escalation_points(emotions, set(self.label_sets[task].negative))
        compliance = check_compliance(
            [Utterance(s.speaker, s.start, s.text) for s in spoken],
            self.phrase_lists,
            language,
            speakers_known=stereo,
            roles={"agent": self.config.agent, "customer": self.config.customer},
        )
        metrics = call_metrics(
            {speaker: t.speech for speaker, t in zip(speakers, trackers)},
            {speaker: sum(len(s.words) for s in spoken if s.speaker == speaker) for speaker in speakers},
            {
                speaker: None if t.loudness_power is None else round(10 * np.log10(max(t.loudness_power, 1e-12)), 2)
                for speaker, t in zip(speakers, trackers)
            },
            duration,
        )
        return CallAnalysis(
            duration, speakers, language, tuple(segments), labels, tuple(escalations), compliance, metrics
        )


class CallStream:
    """One call in progress: `feed` audio chunks ((C, n) or (n,) float32 at 16 kHz), then `finish`.

    A stereo call is held until its channels are heard (at most `PROBE_SECONDS`): channels carrying the
    same signal are one speaker stream (mixed to mono), otherwise each channel is a speaker.
    """

    def __init__(self, analyzer: CallAnalyzer, channel_count: int) -> None:
        if channel_count not in (1, 2):
            raise InputError(f"audio channels: {channel_count}; expected 1 (mono) or 2 (agent and customer)")
        self.analyzer = analyzer
        self.channel_count = channel_count
        self.held: list[np.ndarray] = []  # stereo audio until the channel layout is known
        self.trackers: list[ChannelTracker] = []
        if channel_count == 1:
            self._start(1)
        self.segments: list[Segment] = []
        self.history: dict[int, SpokenHistory] = {}  # channel -> what it said so far (whisper's prompt)
        self.samples = 0

    def _start(self, speakers: int) -> None:
        self.trackers = [ChannelTracker(channel, self.analyzer.config.vad) for channel in range(speakers)]

    def feed(self, chunk: np.ndarray) -> list[Segment]:
        """Add audio; returns the segments (partial results) whose speech ended within it."""
        chunk = np.asarray(chunk, np.float32)
        chunk = chunk[None] if chunk.ndim == 1 else chunk  # (C, n)
        if chunk.ndim != 2 or chunk.shape[0] != self.channel_count:
            raise InputError(f"audio chunk of shape {chunk.shape}: expected ({self.channel_count}, samples)")
        if not np.isfinite(chunk).all():
            raise InputError("audio chunk: NaN or infinite samples")
        self.samples += chunk.shape[1]
        if not self.trackers:
            self.held.append(chunk)
            chunk = self._probe(final=False)
        return self._transcribe(self._track(chunk))

    def _probe(self, final: bool) -> np.ndarray:
        """Decide the channel layout once the held audio shows it; returns the audio to track now."""
        held = np.concatenate(self.held, axis=1) if self.held else np.zeros((2, 0), np.float32)  # (2, n)
        same = same_signal(held) if held.shape[1] >= PROBE_MIN_SECONDS * SAMPLE_RATE else None
        if same is None and not final and held.shape[1] < PROBE_SECONDS * SAMPLE_RATE:
            return held[:, :0]
        self._start(1 if same else 2)
        self.held = []
        return held

    def _track(self, chunk: np.ndarray) -> list[ClosedRegion]:
        if chunk.shape[0] != len(self.trackers):
            chunk = chunk.mean(0, keepdims=True)  # (1, n): one speaker stream on both channels
        return [region for tracker, samples in zip(self.trackers, chunk) for region in tracker.feed(samples)]

    def _transcribe(self, closed: list[ClosedRegion]) -> list[Segment]:
        """Regions in one batch; conditioned on previous text, a channel's later region waits for its earlier one."""
        pending = sorted(closed, key=lambda r: (r.start, r.channel))
        conditioned = self.analyzer.config.asr.condition_on_previous_text
        new: list[Segment] = []
        while pending:
            batch, later, seen = [], [], set()
            for region in pending:
                (later if conditioned and region.channel in seen else batch).append(region)
                seen.add(region.channel)
            new += self.analyzer.segments(batch, len(self.trackers), self.history)
            pending = later
        new.sort(key=lambda s: (s.start, s.channel))
        self.segments += new
        return new

    def finish(self) -> CallAnalysis:
        """Close the open segments and compute the call-level results."""
        if not self.trackers:
            self._transcribe(self._track(self._probe(final=True)))
        self._transcribe([region for tracker in self.trackers for region in tracker.finish()])
        return self.analyzer.conclude(self.segments, self.trackers, self.samples / SAMPLE_RATE)


_ANALYZERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def call_analyzer(pipeline) -> CallAnalyzer | None:
    """The pipeline's CallAnalyzer (built once per pipeline), or None when its folder has no call.yaml."""
    if pipeline not in _ANALYZERS:
        with verified_reads(getattr(pipeline, "verified", None)):  # call.yaml, label sets, phrase lists
            config = load_call_config(pipeline.model_dir)
            _ANALYZERS[pipeline] = None if config is None else CallAnalyzer(pipeline, config)
    return _ANALYZERS[pipeline]


def is_call_model(pipeline) -> bool:
    """True when the pipeline's model folder configures call analysis (`call.yaml`)."""
    return (Path(pipeline.model_dir) / "call.yaml").is_file()
