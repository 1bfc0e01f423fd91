"""The Inspection servicer: proto requests -> model manager and pipelines -> proto results."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from mmfusion.config import ConfigError
from mmfusion.proto import inspection_pb2 as pb
from mmfusion.proto import inspection_pb2_grpc as pb_grpc
from mmfusion.serving.convert import (
    REPORT_HEAD_KINDS,
    decode_audio_bytes,
    image_from_proto,
    inputs_from_request,
    model_to_proto,
    prediction_to_proto,
)
from mmfusion.serving.models import ModelEntry, ModelManager, ModelNotFound
from mmfusion.serving.streams import FrameQueue, StreamState
from mmfusion.types import Inputs, InputError

LOG = logging.getLogger(__name__)
DEFAULT_MAX_AUDIO_BYTES = 256 * 1024 * 1024


def _one_line(error: BaseException) -> str:
    return " | ".join(line.strip() for line in str(error).splitlines() if line.strip())


@contextmanager
def rpc_errors(context: grpc.ServicerContext):
    """Turn user errors into status codes; the server keeps serving after any of them."""
    try:
        yield
    except ModelNotFound as error:
        context.abort(grpc.StatusCode.NOT_FOUND, _one_line(error))
    except ConfigError as error:
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, _one_line(error))
    except (InputError, ValueError) as error:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, _one_line(error))
    except NotImplementedError as error:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, _one_line(error))
    except MemoryError:
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "the server ran out of memory on this request")


def _milliseconds(start: float, end: float) -> float:
    return (end - start) * 1000.0


class InspectionServicer(pb_grpc.InspectionServicer):
    """Translation only: every decision about models lives in ModelManager and Pipeline."""

    def __init__(self, models: ModelManager, max_audio_bytes: int = DEFAULT_MAX_AUDIO_BYTES) -> None:
        self.models = models
        self.max_audio_bytes = max_audio_bytes

    def _predict(self, entry: ModelEntry, inputs: Inputs, started: float, **options: bool) -> pb.InspectionResult:
        prepared = entry.pipeline.prepare(inputs)
        decoded = time.perf_counter()
        with entry.compute_lock:
            computing = time.perf_counter()
            prediction = entry.pipeline.predict(prepared)
        done = time.perf_counter()
        result = prediction_to_proto(prediction, entry, **options)
        result.timings.CopyFrom(
            pb.Timings(
                decode_ms=_milliseconds(started, decoded),
                queue_ms=_milliseconds(decoded, computing),
                compute_ms=_milliseconds(computing, done),
                total_ms=_milliseconds(started, time.perf_counter()),
            )
        )
        return result

    def Inspect(self, request: pb.InspectRequest, context: grpc.ServicerContext) -> pb.InspectionResult:
        with rpc_errors(context):
            started = time.perf_counter()
            entry = self.models.get(request.model, request.version)
            inputs = inputs_from_request(request)
            return self._predict(
                entry,
                inputs,
                started,
                include_heatmap=request.include_heatmap,
                include_embedding=request.include_embedding,
            )

    def _serve_frame(self, stream: StreamState, frame: pb.Frame, skipped: list[int]) -> pb.FrameResult:
        started = time.perf_counter()
        entry = self.models.get(stream.model, stream.version)
        reply = pb.FrameResult(
            stream_id=frame.stream_id,
            sequence_number=frame.sequence_number,
            capture_time=frame.capture_time,
            skipped_sequence_numbers=skipped,
        )
        try:
            image = image_from_proto(frame.image, "frame.image") if frame.HasField("image") else None
            inputs = Inputs(image=image, text=frame.text or None)
            if not inputs.present():
                raise InputError("frame: no image and no text; a frame needs at least one")
            reply.result.CopyFrom(self._predict(entry, inputs, started))
        except InputError as error:
            reply.error.CopyFrom(pb.FrameError(code=grpc.StatusCode.INVALID_ARGUMENT.name, message=_one_line(error)))
            return reply
        reply.smoothed_verdict = stream.smooth(reply.result.verdict)
        return reply

    def StreamInspect(self, request_iterator, context: grpc.ServicerContext) -> Iterator[pb.FrameResult]:
        frames = FrameQueue(request_iterator)
        context.add_callback(frames.stop)
        with rpc_errors(context):
            for stream, frame, skipped in frames:
                yield self._serve_frame(stream, frame, skipped)
            if not frames.seen_any and context.is_active():
                raise InputError("request stream: no frames; send at least one Frame")

    def AnalyzeAudio(self, request_iterator, context: grpc.ServicerContext) -> pb.InspectionResult:
        with rpc_errors(context):
            started = time.perf_counter()
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
            waveform = decode_audio_bytes(bytes(data), first.encoding, first.sample_rate, first.channels, "audio")
            return self._predict(entry, Inputs(audio=waveform, text=text or None), started)

    def GenerateReport(self, request: pb.ReportRequest, context: grpc.ServicerContext) -> Iterator[pb.ReportChunk]:
        with rpc_errors(context):
            entry = self.models.get(request.model, request.version)
            heads = entry.config.heads
            report_heads = [name for name, spec in heads.items() if spec.name in REPORT_HEAD_KINDS]
            listed = ", ".join(f"{name}: {spec.name}" for name, spec in heads.items())
            if not report_heads:
                raise NotImplementedError(f"model {entry.name!r} has no report head (its heads: {listed})")
            raise NotImplementedError(f"model {entry.name!r}: report decoding is not wired to this server yet")
        yield pb.ReportChunk()  # unreachable; makes this method a generator, as a server-streaming RPC must be

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
                raise InputError(f"name: empty; expected one of {', '.join(self.models.available_names())}")
            return model_to_proto(self.models.load(request.name, backend=request.backend or "torch"))

    def UnloadModel(self, request: pb.UnloadModelRequest, context: grpc.ServicerContext) -> pb.ModelInfo:
        with rpc_errors(context):
            if not request.name:
                raise InputError(f"name: empty; expected one of the loaded models {', '.join(self.models.loaded_names())}")
            return model_to_proto(self.models.unload(request.name))
