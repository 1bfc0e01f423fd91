"""The Inspection servicer: proto requests -> the model's scheduler -> proto results, with cache and metrics."""

from __future__ import annotations

import functools
import itertools
import logging
import time
from collections.abc import Iterator

import grpc

from mmfusion.calls.call import is_call_model
from mmfusion.config import ConfigError
from mmfusion.proto import inspection_pb2 as pb
from mmfusion.proto import inspection_pb2_grpc as pb_grpc
from mmfusion.serving.batching import Outcome, Predict
from mmfusion.serving.cache import ResultCache
from mmfusion.serving.call_stream import call_updates
from mmfusion.serving.convert import (
    REPORT_HEAD_KINDS,
    decode_audio_bytes,
    image_from_proto,
    images_from_proto,
    inputs_from_request,
    model_to_proto,
    prediction_to_proto,
)
from mmfusion.serving.dispatch import failed, run_on_model, timings
from mmfusion.serving.errors import one_line, rpc_errors, status_of
from mmfusion.serving.inspect_cache import InspectCache
from mmfusion.serving.metrics import ServiceMetrics
from mmfusion.serving.models import MissingModelName, ModelEntry, ModelManager
from mmfusion.serving.report_stream import report_chunks
from mmfusion.serving.scheduler import QueueFullError, SchedulerClosedError
from mmfusion.serving.stream_limits import FrameGate, LimitExceeded, frame_gate
from mmfusion.serving.streams import FrameSlot, FrameWork, StreamSession, StreamState
from mmfusion.types import InputError, Inputs

LOG = logging.getLogger(__name__)
DEFAULT_MAX_AUDIO_BYTES = 256 * 1024 * 1024


class InspectionServicer(pb_grpc.InspectionServicer):
    """Translation only: models live in ModelManager, batching in each model's scheduler, results in the cache."""

    def __init__(
        self,
        models: ModelManager,
        max_audio_bytes: int = DEFAULT_MAX_AUDIO_BYTES,
        metrics: ServiceMetrics | None = None,
        cache: ResultCache | None = None,
        no_cache_models: frozenset[str] = frozenset(),
    ) -> None:
        self.models = models
        self.max_audio_bytes = max_audio_bytes
        self.metrics = metrics if metrics is not None else ServiceMetrics()
        cache = cache if cache is not None else ResultCache(0)  # an empty cache is falsy (len 0)
        self.results = InspectCache(cache, self.metrics, frozenset(no_cache_models))
        self._calls = itertools.count()

    def _predict(
        self, entry: ModelEntry, inputs: Inputs, received: float, context: grpc.ServicerContext, **options: bool
    ) -> pb.InspectionResult:
        prepared = entry.pipeline.ready(inputs)  # decoded and preprocessed here, in parallel with the model
        submitted = time.monotonic()
        outcome = run_on_model(entry, Predict(prepared), context)
        result = prediction_to_proto(outcome.unwrap(), entry, **options)
        result.timings.CopyFrom(timings(received, submitted, outcome))
        return result

    def Inspect(self, request: pb.InspectRequest, context: grpc.ServicerContext) -> pb.InspectionResult:
        with rpc_errors(context):
            received = time.monotonic()
            entry = self.models.get(request.model, request.version)
            with self.metrics.request(entry.name, entry.version):
                key = self.results.key(entry, request)
                cached = self.results.get(entry, key, received) if key is not None else None
                if cached is not None:
                    return cached
                options = {"include_heatmap": request.include_heatmap, "include_embedding": request.include_embedding}
                result = self._predict(entry, inputs_from_request(request), received, context, **options)
                if key is not None:
                    self.results.put(key, result)
                return result

    def _start_frame(self, stream: StreamState, frame: pb.Frame, gate: FrameGate | None = None) -> FrameWork:
        """Decode a frame and queue it on its model, dropping the stream's oldest unserved frames beyond its limit.

        With a per-caller rate limit (`gate`), a frame over it is answered RESOURCE_EXHAUSTED, never computed.
        """
        received = time.monotonic()
        entry = self.models.get(stream.model, stream.version)
        refusal = gate() if gate is not None else None
        if refusal is not None:
            error = LimitExceeded(f"frame {frame.sequence_number} of stream {stream.stream_id!r}: {refusal}")
            return FrameWork(failed(error), entry, received, received)
        try:
            image = image_from_proto(frame.image, "frame.image") if frame.HasField("image") else None
            if frame.HasField("reference_image"):
                stream.reference = image_from_proto(frame.reference_image, "frame.reference_image")
            inputs = Inputs(image=image, text=frame.text or None, reference=stream.reference)
            if not inputs.present():
                raise InputError("frame: no image and no text; a frame needs at least one")
            work = Predict(entry.pipeline.ready(inputs))  # decoded and preprocessed on the stream's thread
            submitted = time.monotonic()
            future = entry.scheduler.submit(work, stream_id=stream.key)
        except (InputError, ValueError, QueueFullError, SchedulerClosedError) as error:
            return FrameWork(failed(error), entry, received, received)
        dropped = entry.scheduler.drop_oldest(stream.key, keep=stream.max_pending)
        if dropped:
            self.metrics.record_dropped_frames(stream.stream_id, len(dropped))
        return FrameWork(future, entry, received, submitted)

    def _answer(self, stream: StreamState, slot: FrameSlot, skipped: list[int]) -> pb.FrameResult:
        """A FrameResult for a frame whose work is done: its result, or its error with a status name."""
        reply = pb.FrameResult(
            stream_id=stream.stream_id,
            sequence_number=slot.sequence_number,
            capture_time=slot.capture_time,
            skipped_sequence_numbers=skipped,
        )
        work = slot.work
        error = work.future.exception()
        outcome: Outcome | None = None if error is not None else work.future.result()
        error = error or outcome.error
        self.metrics.record_request(work.entry.name, work.entry.version, success=error is None)
        self.metrics.set_stream_fps(stream.stream_id, stream.answered())
        if error is not None:
            reply.error.CopyFrom(pb.FrameError(code=status_of(error).name, message=one_line(error)))
            return reply
        reply.result.CopyFrom(
            prediction_to_proto(
                outcome.value,
                work.entry,
                include_heatmap=stream.include_heatmap,
                heatmap_max_side=stream.heatmap_max_side,
            )
        )
        reply.result.timings.CopyFrom(timings(work.received, work.submitted, outcome))
        reply.smoothed_verdict = stream.smooth(reply.result.verdict)
        return reply

    def StreamInspect(self, request_iterator, context: grpc.ServicerContext) -> Iterator[pb.FrameResult]:
        start = functools.partial(self._start_frame, gate=frame_gate(context))
        session = StreamSession(request_iterator, start, next(self._calls))
        context.add_callback(session.stop)
        with rpc_errors(context):
            try:
                for stream, slot, skipped in session:
                    yield self._answer(stream, slot, skipped)
            finally:
                session.stop()
                for stream_id in session.stream_ids:
                    self.metrics.forget_stream(stream_id)
            if not session.seen_any and context.is_active():
                raise InputError("request stream: no frames; send at least one Frame")

    def AnalyzeAudio(self, request_iterator, context: grpc.ServicerContext) -> pb.InspectionResult:
        with rpc_errors(context):
            received = time.monotonic()
            first: pb.AudioChunk | None = None
            data = bytearray()
            text = ""
            for index, chunk in enumerate(request_iterator):
                if first is None:
                    first = chunk
                    entry = self.models.get(chunk.model, chunk.version)
                elif chunk.model and chunk.model != first.model:
                    raise InputError(f"chunks[{index}].model: {chunk.model!r}; the clip started with {first.model!r}")
                data += chunk.data
                text = text or chunk.text
                if len(data) > self.max_audio_bytes:
                    context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"audio: more than {self.max_audio_bytes} bytes in one clip; send a shorter clip",
                    )
            if first is None:
                raise InputError("request stream: no audio chunks; send at least one AudioChunk naming the model")
            with self.metrics.request(entry.name, entry.version):
                if is_call_model(entry.pipeline):  # call analysis keeps the channels: agent and customer
                    return self._analyze_call(entry, bytes(data), first, received, context)
                waveform = decode_audio_bytes(bytes(data), first.encoding, first.sample_rate, first.channels, "audio")
                return self._predict(entry, Inputs(audio=waveform, text=text or None), received, context)

    def _analyze_call(
        self, entry: ModelEntry, data: bytes, first: pb.AudioChunk, received: float, context: grpc.ServicerContext
    ) -> pb.InspectionResult:
        from mmfusion.calls.decode import decode_call_audio
        from mmfusion.serving.calls import call_to_proto, call_work, max_call_seconds

        limit = max_call_seconds(entry.pipeline)
        audio = decode_call_audio(data, first.encoding, first.sample_rate, first.channels, "audio", limit)
        submitted = time.monotonic()
        outcome = run_on_model(entry, call_work(audio), context)
        result = call_to_proto(outcome.unwrap(), entry.name, entry.version)
        result.timings.CopyFrom(timings(received, submitted, outcome))
        return result

    def StreamCall(self, request_iterator, context: grpc.ServicerContext) -> Iterator[pb.CallUpdate]:
        with rpc_errors(context):
            yield from call_updates(self.models, request_iterator, context, self.metrics, self.max_audio_bytes)

    def GenerateReport(self, request: pb.ReportRequest, context: grpc.ServicerContext) -> Iterator[pb.ReportChunk]:
        with rpc_errors(context):
            entry = self.models.get(request.model, request.version)
            heads = entry.config.heads
            report_heads = [name for name, spec in heads.items() if spec.name in REPORT_HEAD_KINDS]
            listed = ", ".join(f"{name}: {spec.name}" for name, spec in heads.items())
            if not report_heads:
                raise NotImplementedError(f"model {entry.name!r} has no report head (its heads: {listed})")
            images = images_from_proto(request.images, "images")  # count and total size checked before decoding
            for image in images:  # checked here, off the model's thread
                entry.pipeline.prepare(Inputs(image=image))
            with self.metrics.request(entry.name, entry.version):
                yield from report_chunks(entry, report_heads[0], images, request.text, context)

    def ListModels(self, request: pb.ListModelsRequest, context: grpc.ServicerContext) -> pb.ListModelsResponse:
        with rpc_errors(context):
            entries = {entry.name: entry for entry in self.models.loaded()}
            if request.include_available:
                for name in self.models.repository():
                    if name in entries:
                        continue
                    try:
                        entries[name] = self.models.entry(name)
                    except (ConfigError, ValueError) as error:
                        LOG.warning("model %s is listed in the repository but its config fails: %s", name, error)
            return pb.ListModelsResponse(models=[model_to_proto(entries[name]) for name in sorted(entries)])

    def GetModel(self, request: pb.GetModelRequest, context: grpc.ServicerContext) -> pb.ModelInfo:
        with rpc_errors(context):
            if not request.name:
                raise InputError("name: empty; expected a model name")
            return model_to_proto(self.models.entry(request.name))

    def LoadModel(self, request: pb.LoadModelRequest, context: grpc.ServicerContext) -> pb.ModelInfo:
        with rpc_errors(context):
            if not request.name:
                raise MissingModelName("name: empty; expected one of ", self.models.available_names())
            return model_to_proto(self.models.load(request.name, backend=request.backend or None))

    def UnloadModel(self, request: pb.UnloadModelRequest, context: grpc.ServicerContext) -> pb.ModelInfo:
        with rpc_errors(context):
            if not request.name:
                raise MissingModelName("name: empty; expected one of the loaded models ", self.models.loaded_names())
            return model_to_proto(self.models.unload(request.name))
