"""KServe v2 tensors, protocol-neutral: datatypes, a model's signature, and a request's inputs checked against it.

Shared by both fronts of the KServe v2 protocol: gRPC (kserve.py) and HTTP/REST (kserve_http.py, which turns
its JSON and binary tensors into the same ModelInferRequest message first). A model's KServe inputs are the
graph's named tensors ("image.pixels", "text.input_ids", ...), its outputs the head outputs
("colour.probabilities", ...). Shapes are found by probing: each encoder preprocesses a batch of one small
item and a batch of two items of other sizes, and the graph runs on both; a dimension that differs between
the probes is dynamic (-1), the batch dimension always is. Besides the tensors, a model accepts one BYTES
input per raw modality it reads ("image": encoded JPEG/PNG bytes, "text": UTF-8 strings, "audio": WAV/FLAC
bytes; one element per batch item) which goes through the pipeline's own preprocessing; these are optional
inputs in ModelConfig and are not listed in ModelMetadata.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from math import prod

import numpy as np
from tritonclient.grpc import service_pb2 as kpb  # the KServe v2 messages: the data model both fronts share

from mmfusion.graph import input_name
from mmfusion.pipeline import Pipeline
from mmfusion.proto import inspection_pb2 as pb
from mmfusion.runtime.specs import group_key, probe_specs
from mmfusion.runtime.tensors import TensorSpec as RuntimeTensorSpec
from mmfusion.serving.convert import check_request_images, decode_audio_bytes, image_from_proto
from mmfusion.types import InputError, Modality

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


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of a model: KServe datatype and shape (-1 = any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelSignature:
    """A loaded model's tensors: inputs by modality and the outputs of every head."""

    inputs: dict[str, TensorSpec]
    modality_inputs: dict[Modality, tuple[str, ...]]
    outputs: dict[str, TensorSpec]

    def raw_input_names(self) -> list[str]:
        """The BYTES convenience inputs: one per raw modality the model reads ("image", "text", "audio")."""
        return [m.value for m in self.modality_inputs if m in RAW_MODALITIES]


def datatype_of(dtype: np.dtype) -> str:
    datatype = DATATYPE_OF.get(np.dtype(dtype))
    if datatype is None:
        raise ValueError(f"array dtype {dtype} has no KServe datatype")
    return datatype


def _kserve_spec(spec: RuntimeTensorSpec) -> TensorSpec:
    """A graph tensor spec (numpy dtype name, DYNAMIC = -1) as KServe describes it."""
    return TensorSpec(spec.name, datatype_of(spec.dtype), tuple(spec.shape))


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


def shape_text(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _check_shape(tensor: kpb.ModelInferRequest.InferInputTensor, spec: TensorSpec) -> None:
    shape = list(tensor.shape)
    fits = len(shape) == len(spec.shape) and all(d >= 0 and e in (-1, d) for d, e in zip(shape, spec.shape))
    if not fits:
        raise InputError(
            f"input '{tensor.name}': shape {shape_text(shape)}; expected {shape_text(spec.shape)} (-1 = any size)"
        )


def deserialize_bytes(raw: bytes, count: int, name: str) -> list[bytes]:
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
        return deserialize_bytes(raw, count, tensor.name)
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
                f"expected {expected} for {tensor.datatype} {shape_text(shape)}"
            )
        return np.frombuffer(raw, dtype.newbyteorder("<")).astype(dtype).reshape(shape)
    field = TYPED_CONTENTS.get(tensor.datatype)
    if field is None:
        raise InputError(f"input '{tensor.name}': {tensor.datatype} has no typed contents; send raw_input_contents")
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise InputError(f"input '{tensor.name}': {len(values)} {field}; expected {count} for {shape_text(shape)}")
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
            raise InputError(f"input '{name}': shape {shape_text(shape)}; expected [-1] or [-1, 1]")
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


def serialize_bytes(elements: list[bytes]) -> bytes:
    """KServe BYTES raw contents: each element as a 4-byte little-endian length and its bytes."""
    return b"".join(struct.pack("<I", len(element)) + element for element in elements)


def output_array(datatype: str, shape, raw: bytes) -> np.ndarray:
    """An output tensor's array from its raw little-endian contents (what a ModelInferResponse carries)."""
    return np.frombuffer(raw, DATATYPES[datatype].newbyteorder("<")).astype(DATATYPES[datatype]).reshape(tuple(shape))
