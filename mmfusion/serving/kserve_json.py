"""KServe v2 HTTP/REST bodies <-> KServe v2 messages: JSON tensors and the binary tensor data extension.

An inference request body is JSON, or (binary tensor data extension) JSON of `Inference-Header-Content-Length`
bytes followed by the binary tensors of the inputs whose `parameters.binary_data_size` says how many bytes
are theirs, in the order of `inputs`. Either way it becomes one ModelInferRequest whose inputs all carry raw
contents (JSON `data` converted to little-endian bytes here, checked against the input's shape and datatype),
so the servicer checks every tensor the same way for both fronts. Outputs come back as JSON `data`, or as
binary when `parameters.binary_data` of the requested output (or `binary_data_output` of the request) is true.
Every refusal is an InputError naming the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from math import prod

import numpy as np
from google.protobuf.descriptor import FieldDescriptor
from tritonclient.grpc import service_pb2 as kpb

from mmfusion.serving.kserve_tensors import BYTES, DATATYPES, deserialize_bytes, output_array, serialize_bytes
from mmfusion.types import InputError

HEADER_LENGTH = "inference-header-content-length"
REQUEST_KEYS = ("id", "parameters", "inputs", "outputs")
INPUT_KEYS = ("name", "datatype", "shape", "parameters", "data")
OUTPUT_KEYS = ("name", "parameters")
MAX_DIMENSION = 2**63 - 1  # a shape's sizes are int64 in the message


@dataclass(frozen=True)
class OutputChoice:
    """Which outputs the client wants back as binary data: named ones, else the request's default."""

    binary: dict[str, bool]
    default: bool = False

    def is_binary(self, name: str) -> bool:
        return self.binary.get(name, self.default)


def _object(value, where: str, allowed: tuple[str, ...]) -> dict:
    if not isinstance(value, dict):
        raise InputError(f"{where}: {type(value).__name__}; expected a JSON object")
    unknown = [key for key in value if key not in allowed]
    if unknown:
        raise InputError(f"{where}: unknown key '{unknown[0]}'; expected some of {', '.join(allowed)}")
    return value


def _flag(parameters: dict, key: str, where: str) -> bool | None:
    value = parameters.get(key)
    if value is not None and not isinstance(value, bool):
        raise InputError(f"{where}.parameters.{key}: {value!r}; expected true or false")
    return value


def _shape(value, where: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise InputError(f"{where}.shape: {value!r}; expected a list of whole numbers")
    if any(d < 0 or d > MAX_DIMENSION for d in value):
        raise InputError(f"{where}.shape: {value!r}; expected sizes from 0 to {MAX_DIMENSION}")
    return value


def _flat_strings(data, where: str, out: list[bytes]) -> list[bytes]:
    for item in data if isinstance(data, list) else [data]:
        if isinstance(item, list):
            _flat_strings(item, where, out)
        elif isinstance(item, str):
            out.append(item.encode("utf-8"))
        else:
            raise InputError(f"{where}.data: {type(item).__name__} element; BYTES data are strings")
    return out


def _numeric_bytes(data, datatype: str, count: int, where: str) -> bytes:
    """JSON numbers (nested lists or flat, row-major) as the datatype's little-endian bytes."""
    try:
        array = np.asarray(data)
    except (ValueError, TypeError, RecursionError):  # ragged or too deeply nested lists
        raise InputError(f"{where}.data: nested lists of unequal lengths; expected {count} values") from None
    dtype = DATATYPES[datatype]
    if array.size != count:
        raise InputError(f"{where}.data: {array.size} values; its shape needs {count}")
    if count == 0:
        return b""
    kind = array.dtype.kind
    if dtype.kind == "b":
        if kind != "b":
            raise InputError(f"{where}.data: expected true/false values for BOOL")
    elif dtype.kind in "iu":
        if kind not in "iu":
            raise InputError(f"{where}.data: expected whole numbers for {datatype}")
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise InputError(f"{where}.data: values out of the {datatype} range [{info.min}, {info.max}]")
    elif kind not in "iuf":
        raise InputError(f"{where}.data: expected numbers for {datatype}")
    return array.astype(dtype.newbyteorder("<")).tobytes()


def _input_bytes(tensor: dict, where: str, binary: memoryview, offset: int) -> tuple[bytes, int]:
    """The raw contents of one input and the binary offset after it."""
    datatype, shape = tensor["datatype"], tensor["shape"]
    parameters = _object(tensor.get("parameters", {}), f"{where}.parameters", ("binary_data_size",))
    size = parameters.get("binary_data_size")
    if size is not None:
        if "data" in tensor:
            raise InputError(f"{where}: both data and parameters.binary_data_size; send the tensor one way")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InputError(f"{where}.parameters.binary_data_size: {size!r}; expected a whole number of bytes")
        if offset + size > len(binary):
            raise InputError(
                f"{where}.parameters.binary_data_size: {size} bytes from byte {offset} of the binary data; "
                f"only {len(binary)} bytes follow the JSON header"
            )
        return bytes(binary[offset : offset + size]), offset + size
    if "data" not in tensor:
        raise InputError(f"{where}: no data; send data or parameters.binary_data_size")
    if datatype == BYTES:
        return serialize_bytes(_flat_strings(tensor["data"], where, [])), offset
    if datatype not in DATATYPES:
        return b"", offset  # the servicer names the datatype it expects
    return _numeric_bytes(tensor["data"], datatype, prod(shape), where), offset


def infer_request(
    body: bytes, header_length: int | None, model: str, version: str
) -> tuple[kpb.ModelInferRequest, OutputChoice, float | None]:
    """The ModelInferRequest of an HTTP body, which outputs to send as binary, and the timeout (seconds) if any."""
    if header_length is None:
        header, binary = body, memoryview(b"")
    else:
        if not 0 <= header_length <= len(body):
            raise InputError(
                f"Inference-Header-Content-Length: {header_length}; the body has {len(body)} bytes "
                "(JSON header, then the binary tensors)"
            )
        header, binary = body[:header_length], memoryview(body)[header_length:]
    try:
        document = json.loads(header)
    except (ValueError, UnicodeDecodeError) as error:
        raise InputError(f"request body: not JSON ({error})") from None
    except RecursionError:
        raise InputError("request body: JSON nested too deeply") from None
    document = _object(document, "request", REQUEST_KEYS)
    request_id = document.get("id", "")
    if not isinstance(request_id, str):
        raise InputError(f"id: {request_id!r}; expected a string")
    parameters = _object(document.get("parameters", {}), "parameters", ("binary_data_output", "timeout"))
    default_binary = parameters.get("binary_data_output", False)
    if not isinstance(default_binary, bool):
        raise InputError(f"parameters.binary_data_output: {default_binary!r}; expected true or false")
    timeout_us = parameters.get("timeout")
    if timeout_us is not None and (not isinstance(timeout_us, int) or isinstance(timeout_us, bool) or timeout_us <= 0):
        raise InputError(f"parameters.timeout: {timeout_us!r}; expected microseconds > 0")
    inputs = document.get("inputs")
    if not isinstance(inputs, list):
        raise InputError(f"inputs: {'missing' if inputs is None else type(inputs).__name__}; expected a list")
    message = kpb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    offset = 0
    for index, tensor in enumerate(inputs):
        where = f"inputs[{index}]"
        tensor = _object(tensor, where, INPUT_KEYS)
        name, datatype = tensor.get("name"), tensor.get("datatype")
        if not isinstance(name, str) or not name:
            raise InputError(f"{where}.name: {name!r}; expected the input's name")
        where = f"input '{name}'"
        if not isinstance(datatype, str):
            raise InputError(f"{where}: datatype {datatype!r}; expected a KServe datatype such as FP32 or BYTES")
        shape = _shape(tensor.get("shape"), where)
        raw, offset = _input_bytes(tensor, where, binary, offset)
        message.inputs.add(name=name, datatype=datatype, shape=shape)
        message.raw_input_contents.append(raw)
    if offset != len(binary):
        raise InputError(
            f"binary data: {len(binary) - offset} bytes after the last input's binary_data_size; "
            "each binary input needs parameters.binary_data_size"
        )
    outputs = document.get("outputs", [])
    if not isinstance(outputs, list):
        raise InputError(f"outputs: {type(outputs).__name__}; expected a list")
    binary_outputs = {}
    for index, output in enumerate(outputs):
        where = f"outputs[{index}]"
        output = _object(output, where, OUTPUT_KEYS)
        name = output.get("name")
        if not isinstance(name, str) or not name:
            raise InputError(f"{where}.name: {name!r}; expected an output's name")
        choice = _object(output.get("parameters", {}), f"output '{name}'.parameters", ("binary_data",))
        flag = _flag(choice, "binary_data", f"output '{name}'")
        if flag is not None:
            binary_outputs[name] = flag
        message.outputs.add(name=name)
    timeout = None if timeout_us is None else timeout_us / 1e6
    return message, OutputChoice(binary_outputs, default_binary), timeout


def infer_response(response: kpb.ModelInferResponse, choice: OutputChoice) -> tuple[bytes, int | None]:
    """The HTTP body of a ModelInferResponse and its JSON header's length (None: all JSON, no binary part)."""
    header: dict = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id:
        header["id"] = response.id
    outputs, chunks = [], []
    for output, raw in zip(response.outputs, response.raw_output_contents):
        entry = {"name": output.name, "datatype": output.datatype, "shape": list(output.shape)}
        if choice.is_binary(output.name):
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif output.datatype == BYTES:
            elements = deserialize_bytes(raw, prod(output.shape), output.name)
            entry["data"] = [element.decode("utf-8", errors="replace") for element in elements]
        else:
            entry["data"] = output_array(output.datatype, output.shape, raw).ravel().tolist()
        outputs.append(entry)
    header["outputs"] = outputs
    encoded = json.dumps(header, separators=(",", ":")).encode()
    if not chunks:
        return encoded, None
    return encoded + b"".join(chunks), len(encoded)


def message_json(message, defaults: bool = True) -> dict:
    """A protobuf message as plain JSON: 64-bit integers as numbers, enums by name, maps as objects.

    `defaults`: every field, set or not (statistics, metadata); else only the fields set (model config).
    """
    fields = message.DESCRIPTOR.fields if defaults else [field for field, _ in message.ListFields()]
    return {field.name: _field_json(field, getattr(message, field.name), defaults) for field in fields}


def _field_json(field: FieldDescriptor, value, defaults: bool):
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        return {str(key): _value_json(value_field, item, defaults) for key, item in value.items()}
    if _is_repeated(field):
        return [_value_json(field, item, defaults) for item in value]
    return _value_json(field, value, defaults)


def _is_repeated(field: FieldDescriptor) -> bool:
    repeated = getattr(field, "is_repeated", None)
    return bool(repeated) if repeated is not None else field.label == FieldDescriptor.LABEL_REPEATED


def _value_json(field: FieldDescriptor, value, defaults: bool):
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return message_json(value, defaults)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return field.enum_type.values_by_number[value].name if value in field.enum_type.values_by_number else value
    if field.type == FieldDescriptor.TYPE_BYTES:
        return value.decode("utf-8", errors="replace")
    return value


def repository_parameters(document, where: str = "parameters") -> dict[str, kpb.ModelRepositoryParameter]:
    """A load request's JSON parameters as the message's parameters (the servicer says which it takes)."""
    parameters = {}
    for key, value in _object(document, where, tuple(document) if isinstance(document, dict) else ()).items():
        if isinstance(value, bool):
            parameters[key] = kpb.ModelRepositoryParameter(bool_param=value)
        elif isinstance(value, int):
            parameters[key] = kpb.ModelRepositoryParameter(int64_param=value)
        elif isinstance(value, str):
            parameters[key] = kpb.ModelRepositoryParameter(string_param=value)
        else:
            raise InputError(f"{where}.{key}: {type(value).__name__}; expected a string, a whole number or a bool")
    return parameters


def json_document(body: bytes, where: str, allowed: tuple[str, ...]) -> dict:
    """A small JSON request body (empty: {}), with only the keys allowed."""
    if not body.strip():
        return {}
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise InputError(f"{where}: not JSON ({error})") from None
    except RecursionError:
        raise InputError(f"{where}: JSON nested too deeply") from None
    return _object(document, where, allowed)
