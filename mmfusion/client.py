"""Python client of the mmfusion gRPC service: inspect, stream, audio, live calls, model management, health."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mmfusion.proto import inspection_pb2 as pb
from mmfusion.proto import inspection_pb2_grpc as pb_grpc
from mmfusion.security.network import is_loopback

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
AUDIO_CHUNK_BYTES = 64 * 1024
CALL_CHUNK_SECONDS = 0.2  # a live call's audio goes out in pieces this long
ImageSource = bytes | str | Path | np.ndarray


class ServerError(Exception):
    """A call the server refused or failed; `code` is the gRPC status, the message is the server's."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


def to_dict(message) -> dict[str, Any]:
    """A result message as plain JSON-ready data (field names as in the .proto)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def image_message(source: ImageSource) -> pb.Image:
    """An Image message from encoded bytes, a file path or an (H, W, 3) / (H, W) uint8 RGB array."""
    if isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim not in (2, 3) or (source.ndim == 3 and source.shape[2] != 3):
            raise ValueError(f"image array {source.shape} {source.dtype}: expected (H, W, 3) or (H, W) uint8")
        encoding = pb.IMAGE_ENCODING_RAW_RGB8 if source.ndim == 3 else pb.IMAGE_ENCODING_RAW_GRAY8
        height, width = source.shape[:2]
        return pb.Image(data=np.ascontiguousarray(source).tobytes(), encoding=encoding, width=width, height=height)
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    return pb.Image(data=data)


def target_hosts(target: str) -> list[str]:
    """The hosts a gRPC target dials ('host:port', '[::1]:port', 'dns:///host:port', 'ipv4:a:p,b:p'); none for unix."""
    if target.startswith(("unix:", "unix-abstract:", "vsock:")):
        return []
    scheme, _, rest = target.partition(":")
    if scheme == "dns":
        rest = rest[2:].partition("/")[2] if rest.startswith("//") else rest  # dns://[authority]/host:port
        addresses = [rest]
    elif scheme in ("ipv4", "ipv6"):
        addresses = rest.split(",")
    else:
        addresses = [target]
    hosts = []
    for address in addresses:
        if address.startswith("["):  # [v6]:port
            hosts.append(address[1 : address.find("]")])
        elif address.count(":") == 1:  # host:port
            hosts.append(address.rpartition(":")[0])
        else:  # a bare host, or a bare IPv6 address
            hosts.append(address)
    return hosts


def check_plaintext_credentials(target: str, what: str) -> None:
    """ValueError unless every host the target dials is this machine: credentials must not cross a network bare."""
    remote = [host for host in target_hosts(target) if not is_loopback(host)]
    if remote:
        raise ValueError(
            f"server {target}: refusing to send {what} over a plaintext channel to {remote[0]}, not this machine; "
            "connect with TLS (credentials=channel_credentials(ca); CLI --tls-ca FILE) or opt in with "
            "insecure_credentials=True (CLI --insecure-credentials)"
        )


def _audio_source(source: bytes | str | Path) -> bytes:
    return source if isinstance(source, bytes) else Path(source).read_bytes()


def pcm16_chunks(samples: np.ndarray, sample_rate: int, chunk_seconds: float = CALL_CHUNK_SECONDS) -> Iterator[bytes]:
    """(C, N) or (N,) float samples in [-1, 1] as PCM16 chunks (little-endian, channels interleaved)."""
    samples = np.asarray(samples, np.float32)
    samples = samples[None] if samples.ndim == 1 else samples  # (C, N)
    step = max(1, round(chunk_seconds * sample_rate))
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2").T  # (N, C)
    for start in range(0, pcm.shape[0], step):
        yield np.ascontiguousarray(pcm[start : start + step]).tobytes()


def paced(chunks: Iterable, seconds_each: float, speed: float | None = 1.0) -> Iterator:
    """Yield chunks of `seconds_each` of audio no faster than real time times `speed` (None: at once)."""
    started = time.perf_counter()
    for index, chunk in enumerate(chunks):
        if speed:
            time.sleep(max(0.0, started + index * seconds_each / speed - time.perf_counter()))
        yield chunk


class _CredentialsInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the `authorization` metadata to every call of a channel."""

    def __init__(self, authorization: str) -> None:
        self.metadata = (("authorization", authorization),)

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return details._replace(metadata=tuple(details.metadata or ()) + self.metadata)

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)


class InspectionClient:
    """A channel to one server; methods raise ServerError with the server's status and message.

    `api_key` or `token` (a JWT) go in the `authorization` metadata of every call; `credentials`
    (see mmfusion.security.tls.channel_credentials) make the channel TLS. Without TLS, an API key or token
    is sent only to a server on this machine unless `insecure_credentials` says otherwise.
    """

    def __init__(
        self,
        target: str,
        timeout: float | None = 60.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        api_key: str | None = None,
        token: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        insecure_credentials: bool = False,
    ) -> None:
        if api_key is not None and token is not None:
            raise ValueError("api_key and token: give one of them, not both")
        if credentials is None and not insecure_credentials and (api_key is not None or token is not None):
            check_plaintext_credentials(target, "an API key" if api_key is not None else "a token")
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        self.target = target
        self.timeout = timeout
        if credentials is not None:
            self.channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        if api_key is not None or token is not None:
            authorization = f"ApiKey {api_key}" if api_key is not None else f"Bearer {token}"
            self.channel = grpc.intercept_channel(self.channel, _CredentialsInterceptor(authorization))
        self.stub = pb_grpc.InspectionStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)

    def __enter__(self) -> InspectionClient:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _call(self, method, request, timeout: float | None = None):
        try:
            return method(request, timeout=timeout or self.timeout)
        except grpc.RpcError as error:
            raise ServerError(error.code(), error.details()) from None

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the channel connects (the server is up) or raise ServerError."""
        try:
            grpc.channel_ready_future(self.channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise ServerError(grpc.StatusCode.UNAVAILABLE, f"no server at {self.target} after {timeout} s") from None

    def inspect(
        self,
        model: str,
        image: ImageSource | None = None,
        text: str | None = None,
        audio: bytes | str | Path | None = None,
        frames: Iterable[ImageSource] = (),
        version: str = "",
        include_heatmap: bool = False,
        include_embedding: bool = False,
        reference: ImageSource | None = None,
    ) -> pb.InspectionResult:
        """One sample: any mix of image (with its golden-template `reference`), frames, text and audio."""
        request = pb.InspectRequest(
            model=model,
            version=version,
            text=text or "",
            frames=[image_message(frame) for frame in frames],
            include_heatmap=include_heatmap,
            include_embedding=include_embedding,
        )
        if image is not None:
            request.image.CopyFrom(image_message(image))
        if reference is not None:
            request.reference_image.CopyFrom(image_message(reference))
        if audio is not None:
            request.audio.CopyFrom(pb.Audio(data=_audio_source(audio)))
        return self._call(self.stub.Inspect, request)

    def stream(self, frames: Iterable[pb.Frame], timeout: float | None = None) -> Iterator[pb.FrameResult]:
        """Send Frame messages, receive FrameResults as they come (in order per stream)."""
        try:
            yield from self.stub.StreamInspect(iter(frames), timeout=timeout)
        except grpc.RpcError as error:
            raise ServerError(error.code(), error.details()) from None

    def analyze_audio(
        self,
        model: str,
        audio: bytes | str | Path,
        sample_rate: int = 0,
        encoding: int = pb.AUDIO_ENCODING_UNSPECIFIED,
        text: str = "",
        chunk_bytes: int = AUDIO_CHUNK_BYTES,
    ) -> pb.InspectionResult:
        """A clip (file, container bytes, or raw PCM16 with its sample rate) sent in chunks."""
        data = _audio_source(audio)

        def chunks() -> Iterator[pb.AudioChunk]:
            yield pb.AudioChunk(
                model=model, encoding=encoding, sample_rate=sample_rate, text=text, data=data[:chunk_bytes]
            )
            for start in range(chunk_bytes, len(data), chunk_bytes):
                yield pb.AudioChunk(data=data[start : start + chunk_bytes])

        try:
            return self.stub.AnalyzeAudio(chunks(), timeout=self.timeout)
        except grpc.RpcError as error:
            raise ServerError(error.code(), error.details()) from None

    def stream_call(
        self,
        model: str,
        chunks: Iterable[bytes],
        sample_rate: int = 16000,
        channels: int = 1,
        encoding: int = pb.AUDIO_ENCODING_PCM16,
        version: str = "",
        timeout: float | None = None,
    ) -> Iterator[pb.CallUpdate]:
        """A live call (StreamCall): audio chunks in as `chunks` gives them, updates out as they come.

        PCM16 chunks (see pcm16_chunks; pace them with `paced` to play a file at real time) carry whole
        frames; other encodings send a container's bytes. The updates are segments as their speech ends,
        then the summary. Leaving the loop early cancels the call.
        """
        config = pb.CallConfig(
            model=model, version=version, encoding=encoding, sample_rate=sample_rate, channels=channels
        )

        def requests() -> Iterator[pb.CallRequest]:
            yield pb.CallRequest(config=config)
            for chunk in chunks:
                yield pb.CallRequest(audio=chunk)

        call = self.stub.StreamCall(requests(), timeout=timeout)
        try:
            yield from call
        except grpc.RpcError as error:
            raise ServerError(error.code(), error.details()) from None
        finally:
            call.cancel()  # nothing once the call ended; ends it when the caller stopped reading early

    def generate_report(
        self, model: str, images: Iterable[ImageSource] = (), text: str = "", version: str = ""
    ) -> Iterator[pb.ReportChunk]:
        """Report text in chunks; the last chunk carries the structured fields."""
        request = pb.ReportRequest(model=model, version=version, text=text, images=[image_message(i) for i in images])
        try:
            yield from self.stub.GenerateReport(request, timeout=self.timeout)
        except grpc.RpcError as error:
            raise ServerError(error.code(), error.details()) from None

    def list_models(self, include_available: bool = False) -> list[pb.ModelInfo]:
        return list(self._call(self.stub.ListModels, pb.ListModelsRequest(include_available=include_available)).models)

    def get_model(self, name: str) -> pb.ModelInfo:
        return self._call(self.stub.GetModel, pb.GetModelRequest(name=name))

    def load_model(self, name: str, backend: str = "", timeout: float | None = 600.0) -> pb.ModelInfo:
        return self._call(self.stub.LoadModel, pb.LoadModelRequest(name=name, backend=backend), timeout)

    def unload_model(self, name: str) -> pb.ModelInfo:
        return self._call(self.stub.UnloadModel, pb.UnloadModelRequest(name=name))

    def health(self, service: str = "") -> str:
        """SERVING, NOT_SERVING, ... for the server ("") or one model by name."""
        response = self._call(self.health_stub.Check, health_pb2.HealthCheckRequest(service=service))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def frames_from_images(
    images: Iterable[ImageSource], stream_id: str, model: str, options: pb.StreamOptions | None = None
) -> Iterator[pb.Frame]:
    """Frame messages for a sequence of images: sequence numbers from 0, capture time = now."""
    for sequence, image in enumerate(images):
        frame = pb.Frame(stream_id=stream_id, sequence_number=sequence, image=image_message(image))
        frame.capture_time.FromNanoseconds(time.time_ns())
        if sequence == 0:
            frame.model = model
            if options is not None:
                frame.options.CopyFrom(options)
        yield frame
