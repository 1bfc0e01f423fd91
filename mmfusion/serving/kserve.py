"""The KServe v2 / Triton inference service (`inference.GRPCInferenceService`) over the same ModelManager.

One servicer for both fronts: gRPC calls it directly (`add_kserve_to_server`); the HTTP/REST front
(kserve_http.py) turns each HTTP request into the same request message and calls the same method through
the same interceptor chain, with a call context of its own. The methods see only messages and a context
(`abort`, the deadline, callbacks), never the transport. Tensors are translated by kserve_tensors.py.

ModelInfer requests go through the model's scheduler like every other request: requests whose
tensors agree in names, dtypes and non-batch dimensions are concatenated along the batch axis
and run as one backend call (see serving/batching.py); max_batch_size counts requests, not rows.
ModelStreamInfer answers each request of its stream in order, one at a time; a request that fails is
answered with its error message and the stream goes on. ModelStatistics reports what the server's
metrics recorded for each loaded model (serving/statistics.py).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator

import grpc
import numpy as np
from tritonclient.grpc import model_config_pb2 as config_pb
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc as kpb_grpc

from mmfusion import __version__
from mmfusion.config import ConfigError
from mmfusion.pipeline import Pipeline
from mmfusion.serving.batching import Call, InferTensors
from mmfusion.serving.dispatch import run_on_model
from mmfusion.serving.errors import HANDLED_ERRORS, caller_message, rpc_errors
from mmfusion.serving.kserve_tensors import (
    BYTES,
    ModelSignature,
    RequestTensors,
    TensorSpec,
    datatype_of,
    probe_signature,
)
from mmfusion.serving.metrics import ServiceMetrics
from mmfusion.serving.models import MissingModelName, ModelEntry, ModelManager, ModelNotFound
from mmfusion.serving.statistics import Duration, ModelTotals
from mmfusion.serving.stream_limits import LimitExceeded, frame_gate
from mmfusion.types import InputError

KSERVE_SERVICE_NAME = kpb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
SERVER_NAME = "mmfusion"
EXTENSIONS = ("model_repository", "model_configuration", "statistics", "binary_tensor_data")
READY, UNAVAILABLE = "READY", "UNAVAILABLE"


def tensor_metadata(spec: TensorSpec) -> kpb.ModelMetadataResponse.TensorMetadata:
    """A tensor as ModelMetadata lists it."""
    return kpb.ModelMetadataResponse.TensorMetadata(name=spec.name, datatype=spec.datatype, shape=spec.shape)


def _duration(duration: Duration) -> kpb.StatisticDuration:
    return kpb.StatisticDuration(count=duration.count, ns=duration.ns)


def model_statistics(entry: ModelEntry, totals: ModelTotals) -> kpb.ModelStatistics:
    """One loaded model's totals as Triton's ModelStatistics message."""
    return kpb.ModelStatistics(
        name=entry.name,
        version=str(entry.version),
        last_inference=totals.last_inference_ms,
        inference_count=totals.inference_count,
        execution_count=totals.execution_count,
        inference_stats=kpb.InferStatistics(
            success=_duration(totals.success),
            fail=_duration(totals.fail),
            queue=_duration(totals.queue),
            compute_infer=_duration(totals.compute_infer),
        ),
        batch_stats=[
            kpb.InferBatchStatistics(batch_size=size, compute_infer=_duration(duration))
            for size, duration in sorted(totals.batches.items())
        ],
    )


def _unimplemented(feature: str):
    def method(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{feature} is not supported by the mmfusion server")

    method.__doc__ = f"UNIMPLEMENTED: {feature}."
    return method


class _OneRequestAtATime:
    """A stream's context for its request in flight: the stream's deadline; a client that leaves cancels it.

    gRPC keeps every callback added to a call until the call ends, so a long stream adding one per request
    would hold every future (and its result); this holds the current request's only.
    """

    def __init__(self, context) -> None:
        self._context = context
        self._current: list = []
        context.add_callback(self._cancel)

    def time_remaining(self) -> float | None:
        return self._context.time_remaining()

    def add_callback(self, callback) -> bool:
        self._current = [callback]
        return True

    def _cancel(self) -> None:
        for callback in self._current:
            callback()


class KServeServicer(kpb_grpc.GRPCInferenceServiceServicer):
    """KServe v2 inference, model metadata and the model repository, on the Inspection server's models."""

    def __init__(self, models: ModelManager, metrics: ServiceMetrics | None = None) -> None:
        self.models = models
        self.metrics = metrics if metrics is not None else ServiceMetrics()
        # keyed by the Pipeline object, so a reloaded model is probed afresh and an unloaded one is forgotten
        self._signatures: weakref.WeakKeyDictionary[Pipeline, ModelSignature] = weakref.WeakKeyDictionary()
        self._signature_lock = threading.Lock()

    def _signature(self, entry: ModelEntry, context) -> ModelSignature:
        """The model's tensors, probed once per loaded pipeline on its scheduler thread."""
        with self._signature_lock:
            signature = self._signatures.get(entry.pipeline)
        if signature is None:
            signature = run_on_model(entry, Call(probe_signature), context).unwrap()
            with self._signature_lock:
                self._signatures[entry.pipeline] = signature
        return signature

    def ServerLive(self, request, context) -> kpb.ServerLiveResponse:
        return kpb.ServerLiveResponse(live=True)

    def ServerReady(self, request, context) -> kpb.ServerReadyResponse:
        """Ready while it answers: a stopping server refuses new calls; per-model readiness is ModelReady."""
        return kpb.ServerReadyResponse(ready=True)

    def ServerMetadata(self, request, context) -> kpb.ServerMetadataResponse:
        return kpb.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=EXTENSIONS)

    def ModelReady(self, request, context) -> kpb.ModelReadyResponse:
        try:
            self.models.get(request.name, request.version)
        except (ModelNotFound, InputError):
            return kpb.ModelReadyResponse(ready=False)
        return kpb.ModelReadyResponse(ready=True)

    def ModelMetadata(self, request, context) -> kpb.ModelMetadataResponse:
        with rpc_errors(context):
            entry = self.models.get(request.name, request.version)
            signature = self._signature(entry, context)
            return kpb.ModelMetadataResponse(
                name=entry.name,
                versions=[entry.version],
                platform=f"mmfusion_{entry.backend}",
                inputs=[tensor_metadata(spec) for spec in signature.inputs.values()],
                outputs=[tensor_metadata(spec) for spec in signature.outputs.values()],
            )

    def ModelConfig(self, request, context) -> kpb.ModelConfigResponse:
        with rpc_errors(context):
            entry = self.models.get(request.name, request.version)
            signature = self._signature(entry, context)
            inputs = [
                config_pb.ModelInput(
                    name=spec.name, data_type=_config_type(spec.datatype), dims=spec.shape, optional=True
                )
                for spec in signature.inputs.values()
            ]
            inputs += [
                config_pb.ModelInput(name=name, data_type=config_pb.TYPE_STRING, dims=[-1], optional=True)
                for name in signature.raw_input_names()
            ]
            outputs = [
                config_pb.ModelOutput(name=spec.name, data_type=_config_type(spec.datatype), dims=spec.shape)
                for spec in signature.outputs.values()
            ]
            config = config_pb.ModelConfig(
                name=entry.name,
                platform=f"mmfusion_{entry.backend}",
                backend=SERVER_NAME,
                max_batch_size=0,  # the batch dimension is part of every tensor's shape
                input=inputs,
                output=outputs,
            )
            return kpb.ModelConfigResponse(config=config)

    def ModelInfer(self, request: kpb.ModelInferRequest, context) -> kpb.ModelInferResponse:
        """Run one request through the model's scheduler, batched with other requests (see batching.py)."""
        with rpc_errors(context):
            entry = self.models.get(request.model_name, request.model_version)
            with self.metrics.request(entry.name, entry.version):
                return self._infer(entry, request, context)

    def _infer(self, entry: ModelEntry, request: kpb.ModelInferRequest, context) -> kpb.ModelInferResponse:
        signature = self._signature(entry, context)
        tensors = RequestTensors(request, entry.pipeline, signature)
        requested = list(dict.fromkeys(output.name for output in request.outputs))
        unknown = [name for name in requested if name not in signature.outputs]
        if unknown:
            raise InputError(
                f"output '{unknown[0]}': unknown; model {entry.name!r} outputs {', '.join(signature.outputs)}"
            )
        outputs = run_on_model(entry, InferTensors(tensors.graph_inputs), context).unwrap()
        response = kpb.ModelInferResponse(model_name=entry.name, model_version=entry.version, id=request.id)
        for name in requested or list(outputs):
            array = np.asarray(outputs[name])
            response.outputs.add(name=name, datatype=datatype_of(array.dtype), shape=array.shape)
            response.raw_output_contents.append(array.astype(array.dtype.newbyteorder("<")).tobytes())
        return response

    def RepositoryIndex(self, request, context) -> kpb.RepositoryIndexResponse:
        with rpc_errors(context):
            self._check_repository(request.repository_name)
            loaded = {entry.name: entry for entry in self.models.loaded()}
            response = kpb.RepositoryIndexResponse()
            for name in self.models.available_names():
                if name in loaded:
                    response.models.add(name=name, version=loaded[name].version, state=READY)
                    continue
                if request.ready:
                    continue
                try:
                    version, reason = self.models.entry(name).version, "not loaded"
                except (ConfigError, ValueError, ModelNotFound) as error:
                    version, reason = "", " | ".join(filter(None, map(str.strip, str(error).splitlines())))
                response.models.add(name=name, version=version, state=UNAVAILABLE, reason=reason)
            return response

    def RepositoryModelLoad(self, request, context) -> kpb.RepositoryModelLoadResponse:
        with rpc_errors(context):
            self._check_repository(request.repository_name)
            if not request.model_name:
                raise MissingModelName("model_name: empty; expected one of ", self.models.available_names())
            backend = None  # the model's runtime: block
            for key, value in request.parameters.items():
                if key == "backend" and value.WhichOneof("parameter_choice") == "string_param":
                    backend = value.string_param
                else:
                    raise InputError(
                        f"parameters '{key}': not supported; the only load parameter is 'backend' (a string); "
                        "a model's configuration lives in its folder's config.yaml"
                    )
            self.models.load(request.model_name, backend=backend)
            return kpb.RepositoryModelLoadResponse()

    def RepositoryModelUnload(self, request, context) -> kpb.RepositoryModelUnloadResponse:
        """Unload a model; unloading a repository model that is not loaded succeeds, as in Triton."""
        with rpc_errors(context):
            self._check_repository(request.repository_name)
            try:
                self.models.unload(request.model_name)
            except ModelNotFound:
                if request.model_name not in self.models.available_names():
                    raise
            return kpb.RepositoryModelUnloadResponse()

    def _check_repository(self, repository_name: str) -> None:
        known = self.models.model_root.name
        if repository_name and repository_name != known:
            raise ModelNotFound(f"repository {repository_name!r} is not known; this server has one: {known!r}")

    def ModelStatistics(self, request, context) -> kpb.ModelStatisticsResponse:
        """Totals of one loaded model (a name), or of every loaded model (no name), as Triton reports them."""
        with rpc_errors(context):
            if request.name:
                entries = [self.models.get(request.name, request.version)]
            elif request.version:
                raise InputError(f"version '{request.version}': give the model's name with its version")
            else:
                entries = sorted(self.models.loaded(), key=lambda entry: entry.name)
            return kpb.ModelStatisticsResponse(
                model_stats=[
                    model_statistics(entry, self.metrics.statistics.snapshot(entry.name, entry.version))
                    for entry in entries
                ]
            )

    def ModelStreamInfer(self, requests: Iterator[kpb.ModelInferRequest], context) -> Iterator:
        """Answer each request of the stream in order: its response, or its error message (the stream goes on)."""
        gate = frame_gate(context)  # a per-caller rate limit: each request after the first takes a token
        in_flight = _OneRequestAtATime(context)
        for request in requests:
            try:
                refused = gate() if gate is not None else None
                if refused is not None:
                    raise LimitExceeded(refused)
                entry = self.models.get(request.model_name, request.model_version)
                with self.metrics.request(entry.name, entry.version):
                    response = self._infer(entry, request, in_flight)
            except HANDLED_ERRORS as error:
                echo = kpb.ModelInferResponse(
                    model_name=request.model_name, model_version=request.model_version, id=request.id
                )
                yield kpb.ModelStreamInferResponse(error_message=caller_message(error, context), infer_response=echo)
                continue
            yield kpb.ModelStreamInferResponse(infer_response=response)

    SystemSharedMemoryStatus = _unimplemented("system shared memory")
    SystemSharedMemoryRegister = _unimplemented("system shared memory")
    SystemSharedMemoryUnregister = _unimplemented("system shared memory")
    CudaSharedMemoryStatus = _unimplemented("CUDA shared memory")
    CudaSharedMemoryRegister = _unimplemented("CUDA shared memory")
    CudaSharedMemoryUnregister = _unimplemented("CUDA shared memory")
    TraceSetting = _unimplemented("trace settings")
    LogSettings = _unimplemented("log settings")


def _config_type(datatype: str) -> int:
    return config_pb.TYPE_STRING if datatype == BYTES else config_pb.DataType.Value(f"TYPE_{datatype}")


def add_kserve_to_server(
    models: ModelManager, server: grpc.Server, metrics: ServiceMetrics | None = None
) -> KServeServicer:
    """Serve the KServe v2 protocol for `models` on `server` (beside the Inspection service)."""
    servicer = KServeServicer(models, metrics)
    kpb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    return servicer
