"""KServe v2 / Triton gRPC protocol (`inference.GRPCInferenceService`) over the same ModelManager.

A model's KServe inputs are the graph's named tensors ("image.pixels", "text.input_ids", ...),
its outputs the head outputs ("colour.probabilities", ...). Shapes in ModelMetadata are found by
probing: each encoder preprocesses a batch of one small item and a batch of two items of other
sizes, and the graph runs on both; a dimension that differs between the probes is dynamic (-1),
the batch dimension always is. Besides the tensors, a model accepts one BYTES input per raw
modality it reads ("image": encoded JPEG/PNG bytes, "text": UTF-8 strings, "audio": WAV/FLAC
bytes; one element per batch item) which goes through the pipeline's own preprocessing; these
are optional inputs in ModelConfig and are not listed in ModelMetadata.

ModelInfer requests go through the model's scheduler like every other request: requests whose
tensors agree in names, dtypes and non-batch dimensions are concatenated along the batch axis
and run as one backend call (see serving/batching.py); max_batch_size counts requests, not rows.
"""

from __future__ import annotations

import struct
import threading
import weakref
from dataclasses import dataclass
from math import prod

import grpc
import numpy as np
from tritonclient.grpc import model_config_pb2 as config_pb
from tritonclient.grpc import service_pb2 as kpb
from tritonclient.grpc import service_pb2_grpc as kpb_grpc

from mmfusion import __version__
from mmfusion.config import ConfigError
from mmfusion.graph import input_name
from mmfusion.pipeline import Pipeline
from mmfusion.proto import inspection_pb2 as pb
from mmfusion.runtime.specs import group_key, probe_specs
from mmfusion.runtime.tensors import TensorSpec as RuntimeTensorSpec
from mmfusion.serving.batching import Call, InferTensors
from mmfusion.serving.convert import check_request_images, decode_audio_bytes, image_from_proto
from mmfusion.serving.dispatch import run_on_model
from mmfusion.serving.errors import rpc_errors
from mmfusion.serving.metrics import ServiceMetrics
from mmfusion.serving.models import MissingModelName, ModelEntry, ModelManager, ModelNotFound
from mmfusion.types import InputError, Modality

KSERVE_SERVICE_NAME = kpb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
SERVER_NAME = "mmfusion"
EXTENSIONS = ("model_repository", "model_configuration")
BYTES = "BYTES"
DATATYPES = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
DATATYPE_OF = {dtype: name for name, dtype in DATATYPES.items()}
TYPED_CONTENTS = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    BYTES: "bytes_contents",
}
RAW_MODALITIES = (Modality.IMAGE, Modality.TEXT, Modality.AUDIO)  # those with a BYTES convenience input
READY, UNAVAILABLE = "READY", "UNAVAILABLE"


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of a model: KServe datatype and shape (-1 = any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def metadata(self) -> kpb.ModelMetadataResponse.TensorMetadata:
        """This tensor as ModelMetadata lists it."""
        return kpb.ModelMetadataResponse.TensorMetadata(name=self.name, datatype=self.datatype, shape=self.shape)


@dataclass(frozen=True)
class ModelSignature:
    """A loaded model's tensors: inputs by modality and the outputs of every head."""

    inputs: dict[str, TensorSpec]
    modality_inputs: dict[Modality, tuple[str, ...]]
    outputs: dict[str, TensorSpec]

    def raw_input_names(self) -> list[str]:
        """The BYTES convenience inputs: one per raw modality the model reads ("image", "text", "audio")."""
        return [m.value for m in self.modality_inputs if m in RAW_MODALITIES]


def _datatype(dtype: np.dtype) -> str:
    datatype = DATATYPE_OF.get(np.dtype(dtype))
    if datatype is None:
        raise ValueError(f"array dtype {dtype} has no KServe datatype")
    return datatype


def _kserve_spec(spec: RuntimeTensorSpec) -> TensorSpec:
    """A graph tensor spec (numpy dtype name, DYNAMIC = -1) as KServe describes it."""
    return TensorSpec(spec.name, _datatype(spec.dtype), tuple(spec.shape))


def probe_signature(pipeline: Pipeline) -> ModelSignature:
    """Find a pipeline's input and output tensors by running two probe batches through its backend."""
    group = group_key(pipeline.modalities)
    inputs, outputs = probe_specs(pipeline.graph, group, pipeline.backend.run)
    modality_inputs = {
        modality: tuple(input_name(modality, array) for array in pipeline.encoder(modality).input_names)
        for modality in pipeline.modalities
    }
    by_name = {spec.name: _kserve_spec(spec) for spec in inputs}
    return ModelSignature(
        {name: by_name[name] for names in modality_inputs.values() for name in names},  # each encoder's own order
        modality_inputs,
        {spec.name: _kserve_spec(spec) for spec in outputs},
    )


def _shape_text(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _check_shape(tensor: kpb.ModelInferRequest.InferInputTensor, spec: TensorSpec) -> None:
    shape = list(tensor.shape)
    fits = len(shape) == len(spec.shape) and all(d >= 0 and e in (-1, d) for d, e in zip(shape, spec.shape))
    if not fits:
        raise InputError(
            f"input '{tensor.name}': shape {_shape_text(shape)}; expected {_shape_text(spec.shape)} (-1 = any size)"
        )


def _deserialize_bytes(raw: bytes, count: int, name: str) -> list[bytes]:
    """KServe BYTES raw contents: each element is a 4-byte little-endian length and that many bytes."""
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InputError(f"input '{name}': BYTES raw contents end inside an element's 4-byte length")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InputError(f"input '{name}': BYTES element {len(elements)} claims {length} bytes past the end")
        elements.append(raw[offset : offset + length])
        offset += length
    if len(elements) != count:
        raise InputError(f"input '{name}': {len(elements)} BYTES elements; its shape needs {count}")
    return elements


def _bytes_elements(tensor, raw: bytes | None) -> list[bytes]:
    count = prod(tensor.shape)
    if raw is not None:
        return _deserialize_bytes(raw, count, tensor.name)
    elements = list(tensor.contents.bytes_contents)
    if len(elements) != count:
        raise InputError(f"input '{tensor.name}': {len(elements)} bytes_contents; its shape needs {count}")
    return elements


def _numeric_array(tensor, raw: bytes | None) -> np.ndarray:
    """The tensor's data as an array of its shape, from raw little-endian bytes or typed contents."""
    dtype, shape, count = DATATYPES[tensor.datatype], tuple(tensor.shape), prod(tensor.shape)
    if raw is not None:
        expected = count * dtype.itemsize
        if len(raw) != expected:
            raise InputError(
                f"input '{tensor.name}': {len(raw)} bytes of raw contents; "
                f"expected {expected} for {tensor.datatype} {_shape_text(shape)}"
            )
        return np.frombuffer(raw, dtype.newbyteorder("<")).astype(dtype).reshape(shape)
    field = TYPED_CONTENTS.get(tensor.datatype)
    if field is None:
        raise InputError(f"input '{tensor.name}': {tensor.datatype} has no typed contents; send raw_input_contents")
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise InputError(f"input '{tensor.name}': {len(values)} {field}; expected {count} for {_shape_text(shape)}")
    try:
        return np.asarray(values, dtype).reshape(shape)
    except OverflowError:
        raise InputError(f"input '{tensor.name}': {field} has values out of the {tensor.datatype} range") from None


def _raw_item(modality: Modality, data: bytes, field: str):
    """One element of a BYTES convenience input, decoded as the Pipeline decodes files and strings."""
    if modality is Modality.IMAGE:
        return image_from_proto(pb.Image(data=data), field)
    if modality is Modality.AUDIO:
        return decode_audio_bytes(data, pb.AUDIO_ENCODING_UNSPECIFIED, 0, 0, field)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{field}: {len(data)} bytes are not UTF-8 text") from None


class RequestTensors:
    """The tensors of one ModelInferRequest, checked against the model's signature."""

    def __init__(self, request: kpb.ModelInferRequest, pipeline: Pipeline, signature: ModelSignature) -> None:
        self.pipeline = pipeline
        self.signature = signature
        self.arrays: dict[str, np.ndarray] = {}
        self.raw_items: dict[Modality, list] = {}
        self._batch: tuple[int, str] | None = None
        raw = list(request.raw_input_contents)
        if raw and len(raw) != len(request.inputs):
            raise InputError(
                f"raw_input_contents: {len(raw)} entries for {len(request.inputs)} inputs; "
                "send one per input, in the order of inputs"
            )
        if not request.inputs:
            raise InputError(f"inputs: empty; expected some of {self._expected()}")
        for index, tensor in enumerate(request.inputs):
            if raw and tensor.HasField("contents"):
                raise InputError(f"input '{tensor.name}': has contents although raw_input_contents is used")
            self._add(tensor, raw[index] if raw else None)
        self._check_modalities()

    def _expected(self) -> str:
        tensors = ", ".join(self.signature.inputs)
        return f"{tensors} or the BYTES inputs {', '.join(self.signature.raw_input_names())}"

    def _note_batch(self, name: str, size: int) -> None:
        if size < 1:
            raise InputError(f"input '{name}': batch size {size}; expected at least 1")
        if self._batch is None:
            self._batch = (size, name)
        elif self._batch[0] != size:
            raise InputError(f"input '{name}': batch size {size}; expected {self._batch[0]} like '{self._batch[1]}'")

    def _add(self, tensor, raw: bytes | None) -> None:
        name = tensor.name
        if name in self.arrays or any(m.value == name for m in self.raw_items):
            raise InputError(f"input '{name}': given twice; send each input once")
        spec = self.signature.inputs.get(name)
        if spec is not None:
            if tensor.datatype != spec.datatype:
                raise InputError(f"input '{name}': datatype {tensor.datatype}; expected {spec.datatype}")
            _check_shape(tensor, spec)
            self._note_batch(name, tensor.shape[0])
            self.arrays[name] = _numeric_array(tensor, raw)
        elif name in self.signature.raw_input_names():
            self._add_raw(Modality(name), tensor, raw)
        else:
            raise InputError(f"input '{name}': unknown; expected {self._expected()}")

    def _add_raw(self, modality: Modality, tensor, raw: bytes | None) -> None:
        name = tensor.name
        if tensor.datatype != BYTES:
            raise InputError(f"input '{name}': datatype {tensor.datatype}; expected BYTES (one element per item)")
        shape = list(tensor.shape)
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] < 0:
            raise InputError(f"input '{name}': shape {_shape_text(shape)}; expected [-1] or [-1, 1]")
        self._note_batch(name, shape[0])
        elements = _bytes_elements(tensor, raw)
        if modality is Modality.IMAGE:  # count and total size from the headers, before any image is decoded
            check_request_images(
                [(f"input '{name}'[{i}]", pb.Image(data=data)) for i, data in enumerate(elements)], f"input '{name}'"
            )
        self.raw_items[modality] = [
            _raw_item(modality, data, f"input '{name}'[{i}]") for i, data in enumerate(elements)
        ]

    def _check_modalities(self) -> None:
        for modality, names in self.signature.modality_inputs.items():
            given = [name for name in names if name in self.arrays]
            if given and modality in self.raw_items:
                raise InputError(
                    f"input '{modality.value}' and {', '.join(repr(n) for n in given)}: "
                    f"send the {modality.value} either as BYTES or as tensors, not both"
                )
            missing = [name for name in names if name not in self.arrays]
            if given and missing:
                raise InputError(
                    f"{modality.value} inputs: missing {', '.join(repr(n) for n in missing)} "
                    f"(given {', '.join(repr(n) for n in given)}); send all of {', '.join(names)}"
                )

    def graph_inputs(self) -> dict[str, np.ndarray]:
        """The named arrays the backend runs on; BYTES inputs preprocessed by the modality's encoder."""
        arrays = dict(self.arrays)
        for modality, items in self.raw_items.items():
            encoder = self.pipeline.encoder(modality)
            for array, value in encoder.preprocess(items).items():
                arrays[input_name(modality, array)] = value
        return arrays


def _unimplemented(feature: str):
    def method(self, request, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{feature} is not supported by the mmfusion server")

    method.__doc__ = f"UNIMPLEMENTED: {feature}."
    return method


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
                inputs=[spec.metadata() for spec in signature.inputs.values()],
                outputs=[spec.metadata() for spec in signature.outputs.values()],
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
            response.outputs.add(name=name, datatype=_datatype(array.dtype), shape=array.shape)
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

    ModelStreamInfer = _unimplemented(
        "streaming inference (ModelStreamInfer); use ModelInfer or Inspection.StreamInspect"
    )
    ModelStatistics = _unimplemented("model statistics (ModelStatistics); see the Prometheus metrics")
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
