"""StreamCall: a live call over gRPC. A config, then audio in; each segment out as soon as it ended, then the summary.

The call's work runs on the call's own thread (one of the stream pool's, interceptors/guard.py), not on
the model's scheduler: each audio message is decoded (calls/live.py: PcmStream) and fed to the model's
CallStream (VAD, whisper, labels) before the next message is taken, so that many calls run side by side
(CTranslate2 and the ONNX VAD run concurrent calls; the one-slot request reader holds a client that sends
faster than its call is analysed). Only the CallAnalyzer is built on the model's scheduler thread, where
everything else that first touches a pipeline's parts runs. A container (any encoding but PCM16) is
gathered and decoded once the client half-closes, then fed the same way in pieces of one second.

Before each piece of work the call is checked: once the client cancelled or its deadline passed, the call
takes no more audio, does no more work and ends (CANCELLED, DEADLINE_EXCEEDED). A piece already started
(one message's audio, whisper on the segments it closed) runs to its end. The summary's segments are those
sent as partials; the ones still open when the client half-closed go out as partials just before it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import CancelledError

import grpc
import numpy as np

from mmfusion.calls.call import CallAnalyzer, Segment, call_analyzer, is_call_model
from mmfusion.calls.decode import PCM16, decode_call_audio
from mmfusion.calls.live import LiveFlags, PcmStream
from mmfusion.media import SAMPLE_RATE
from mmfusion.proto import inspection_pb2 as pb
from mmfusion.serving.batching import Call
from mmfusion.serving.calls import call_to_proto
from mmfusion.serving.deadlines import time_remaining
from mmfusion.serving.dispatch import milliseconds, run_on_model
from mmfusion.serving.metrics import ServiceMetrics
from mmfusion.serving.models import ListsModels, ModelEntry, ModelManager
from mmfusion.serving.scheduler import DeadlineExceededError
from mmfusion.serving.stream_limits import LimitExceeded
from mmfusion.types import InputError

CONTAINER_PIECE_SAMPLES = SAMPLE_RATE  # a decoded container is fed one second at a time, the call checked between
LABEL_KIND = "call_labels"


class NotACallModel(ListsModels, InputError):
    """StreamCall named a model without call.yaml; lists the loaded call models."""


def check_active(context: grpc.ServicerContext, seconds: float) -> None:
    """Raise once the client cancelled or left (CANCELLED) or the call's deadline passed (DEADLINE_EXCEEDED).

    The call then does no more work; the status reaches the audit, whoever ended the call.
    """
    remaining = time_remaining(context)
    if remaining is not None and remaining <= 0:
        raise DeadlineExceededError(f"StreamCall: the deadline passed after {seconds:.1f} s of call audio")
    if not context.is_active():
        raise CancelledError(f"StreamCall: the client left after {seconds:.1f} s of call audio")


def segment_to_proto(segment: Segment, flags: list[str]) -> pb.CallSegment:
    """A segment as StreamCall sends it, with the flags that fired with it."""
    return pb.CallSegment(
        speaker=segment.speaker,
        channel=segment.channel,
        start=segment.start,
        end=segment.end,
        text=segment.text,
        language=segment.language,
        words=[pb.Word(word=w.word, start=w.start, end=w.end, probability=w.probability) for w in segment.words],
        labels={
            task: pb.HeadResult(kind=LABEL_KIND, label=result.label, score=result.score, scores=result.scores)
            for task, result in segment.labels.items()
        },
        flags=flags,
    )


def _segment_key(segment: Segment) -> tuple[int, float, float]:
    return segment.channel, segment.start, segment.end


def _check_encoding(config: pb.CallConfig) -> None:
    if config.encoding not in pb.AudioEncoding.values():
        expected = ", ".join(pb.AudioEncoding.keys())
        raise InputError(f"config.encoding: {config.encoding}; expected one of {expected}")


def _next_message(requests: Iterator, context: grpc.ServicerContext):
    """The client's next message; None at the end, or once the client cancelled or left (gRPC's iterator raises)."""
    try:
        return next(requests, None)
    except grpc.RpcError:
        if context.is_active():
            raise
        return None


def _messages(requests: Iterator, context: grpc.ServicerContext) -> Iterator:
    """The client's messages until the end, a cancellation or the client leaving."""
    while (message := _next_message(requests, context)) is not None:
        yield message


class LiveCall:
    """One StreamCall: audio in, CallUpdates out, on the call's thread."""

    def __init__(
        self,
        entry: ModelEntry,
        analyzer: CallAnalyzer,
        config: pb.CallConfig,
        pcm: PcmStream | None,
        context: grpc.ServicerContext,
        max_audio_bytes: int,
    ) -> None:
        self.entry = entry
        self.config = config
        self.context = context
        self.max_audio_bytes = max_audio_bytes
        self.max_seconds = analyzer.config.max_seconds
        live = pcm is not None
        self.pcm = pcm
        self.analyzer = analyzer
        self.stream = analyzer.stream(config.channels) if live else None
        self.flags = LiveFlags(analyzer, config.channels) if live else None
        self.sent: set[tuple[int, float, float]] = set()
        self.samples = 0  # at 16 kHz, fed so far
        self.decode_seconds = 0.0
        self.compute_seconds = 0.0

    def _check(self) -> None:
        check_active(self.context, self.samples / SAMPLE_RATE)

    def _update(self, segment: Segment) -> pb.CallUpdate:
        self.sent.add(_segment_key(segment))
        flags = self.flags.add(segment)
        return pb.CallUpdate(segment=segment_to_proto(segment, flags), received_seconds=self.samples / SAMPLE_RATE)

    def _feed(self, samples: np.ndarray) -> Iterator[pb.CallUpdate]:
        """Feed 16 kHz samples (C, n); the updates of the segments that ended within them."""
        if samples.shape[1] == 0:
            return
        self.samples += samples.shape[1]
        if self.samples > self.max_seconds * SAMPLE_RATE:
            raise InputError(
                f"audio: more than {self.max_seconds:.0f} s of call audio; expected at most {self.max_seconds:.0f} s "
                "(max_seconds of the model's call.yaml)"
            )
        started = time.monotonic()
        segments = self.stream.feed(samples)
        self.compute_seconds += time.monotonic() - started
        for segment in segments:
            yield self._update(segment)

    def _decode(self, data: bytes, index: int) -> np.ndarray:
        started = time.monotonic()
        samples = self.pcm.push(data, f"requests[{index}].audio")
        self.decode_seconds += time.monotonic() - started
        return samples

    def run(self, requests: Iterator, received: float) -> Iterator[pb.CallUpdate]:
        """Take the audio messages after the config, answer segments as they end, then the summary."""
        container = bytearray()
        for index, request in enumerate(_messages(requests, self.context), start=1):
            self._check()
            kind = request.WhichOneof("request")
            if kind != "audio":
                raise InputError(f"requests[{index}]: {kind or 'an empty message'}; after the config send only audio")
            if self.pcm is None:
                container += request.audio
                if len(container) > self.max_audio_bytes:
                    raise LimitExceeded(
                        f"audio: more than {self.max_audio_bytes} bytes of a container in one call; "
                        "send PCM16 (analysed as it arrives) or a shorter file"
                    )
                continue
            yield from self._feed(self._decode(request.audio, index))
        self._check()
        if self.pcm is None:
            yield from self._container(bytes(container))
        else:
            yield from self._feed(self.pcm.flush())
        if self.samples == 0:
            raise InputError("audio: no samples; after the config send audio messages with PCM16 frames")
        self._check()
        started = time.monotonic()
        analysis = self.stream.finish()
        self.compute_seconds += time.monotonic() - started
        for segment in analysis.segments:  # those still open at the end, in the summary's order
            if _segment_key(segment) not in self.sent:
                yield self._update(segment)
        summary = call_to_proto(analysis, self.entry.name, self.entry.version)
        summary.timings.CopyFrom(
            pb.Timings(
                decode_ms=self.decode_seconds * 1000.0,
                compute_ms=self.compute_seconds * 1000.0,
                total_ms=milliseconds(received, time.monotonic()),
            )
        )
        yield pb.CallUpdate(summary=summary, received_seconds=self.samples / SAMPLE_RATE)

    def _container(self, data: bytes) -> Iterator[pb.CallUpdate]:
        """A whole container, decoded (channels kept), then fed a second at a time."""
        config = self.config
        started = time.monotonic()
        audio = decode_call_audio(data, config.encoding, config.sample_rate, config.channels, "audio", self.max_seconds)
        self.decode_seconds += time.monotonic() - started
        self.stream = self.analyzer.stream(audio.channel_count)
        self.flags = LiveFlags(self.analyzer, audio.channel_count)
        for start in range(0, audio.channels.shape[1], CONTAINER_PIECE_SAMPLES):
            self._check()
            yield from self._feed(audio.channels[:, start : start + CONTAINER_PIECE_SAMPLES])


def _call_model(models: ModelManager, entry: ModelEntry) -> None:
    if not is_call_model(entry.pipeline):
        names = [e.name for e in models.loaded() if e.pipeline is not None and is_call_model(e.pipeline)]
        raise NotACallModel(
            f"config.model: {entry.name!r} is not a call model (its folder has no call.yaml); "
            "expected one of the loaded call models: ",
            names,
        )


def call_updates(
    models: ModelManager,
    requests: Iterator[pb.CallRequest],
    context: grpc.ServicerContext,
    metrics: ServiceMetrics,
    max_audio_bytes: int,
) -> Iterator[pb.CallUpdate]:
    """StreamCall: check the config (first message), then run the call on this thread."""
    received = time.monotonic()
    requests = iter(requests)
    first = _next_message(requests, context)
    if first is None:
        check_active(context, 0.0)
        raise InputError("request stream: no messages; send a CallRequest with config first, then audio")
    kind = first.WhichOneof("request")
    if kind != "config":
        raise InputError(
            f"requests[0]: {kind or 'an empty message'}; expected config first "
            "(model, encoding, sample_rate, channels), then audio"
        )
    config = first.config
    entry = models.get(config.model, config.version)
    with metrics.request(entry.name, entry.version):
        _call_model(models, entry)
        _check_encoding(config)
        pcm = PcmStream(config.sample_rate, config.channels) if config.encoding == PCM16 else None
        analyzer = run_on_model(entry, Call(call_analyzer), context).unwrap()  # built where the pipeline is used
        yield from LiveCall(entry, analyzer, config, pcm, context, max_audio_bytes).run(requests, received)
