"""KServe v2 over HTTP/REST on a second port: the same servicer and interceptor chain as gRPC, JSON in and out.

Routes (KServe v2 REST, with Triton's extensions):

    GET  /v2                                       server metadata
    GET  /v2/health/live, /v2/health/ready         200 while serving (no credentials, like gRPC's ServerLive/Ready)
    GET  /v2/models/{m}[/versions/{v}]             model metadata
    GET  /v2/models/{m}[/versions/{v}]/ready       200 when loaded, else 503
    GET  /v2/models/{m}[/versions/{v}]/config      model configuration
    GET  /v2/models[/{m}[/versions/{v}]]/stats     statistics (all loaded models without a name)
    POST /v2/models/{m}[/versions/{v}]/infer       inference: JSON tensors or the binary tensor data extension
    POST /v2/repository/index                      the model repository
    POST /v2/repository/models/{m}/load|unload     load or unload a model

Each request becomes the request message of the matching gRPC method and runs through the server's own
interceptor chain (request id, audit, authentication, rate limit, RBAC) into the one KServeServicer, with
`HttpCall` standing in for grpc's ServicerContext: credentials come from the `authorization` / `x-api-key`
headers, `x-request-id` goes back as a header, and the status a layer aborts with becomes the HTTP status
with a KServe error body `{"error": "..."}`. Handlers run on worker threads (as many as the gRPC server's),
bodies are bounded by the server's message size (413 beyond, also after gzip/deflate decoding).
Uvicorn serves it in a thread; with TLS files, TLS 1.3 only (client certificates with a client CA).
"""

from __future__ import annotations

import json
import logging
import math
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import anyio
import grpc
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from tritonclient.grpc import service_pb2 as kpb

from mmfusion.security.network import bare_host
from mmfusion.serving.interceptors import CallInterceptor
from mmfusion.serving.interceptors.limits import RETRY_AFTER_KEY
from mmfusion.serving.kserve import KSERVE_SERVICE_NAME, KServeServicer
from mmfusion.serving.kserve_json import (
    HEADER_LENGTH,
    OutputChoice,
    infer_request,
    infer_response,
    json_document,
    message_json,
    repository_parameters,
)
from mmfusion.types import InputError

LOG = logging.getLogger(__name__)
START_TIMEOUT_S = 15.0
JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class HttpAbort(Exception):
    """What `HttpCall.abort` raises (grpc's abort raises too): the call ends with this status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class HttpCall:
    """One HTTP request as the interceptors and the servicer see a call: grpc.ServicerContext's methods they use."""

    def __init__(self, metadata: tuple[tuple[str, str], ...], peer: str, timeout_s: float | None = None) -> None:
        self._metadata = metadata
        self._peer = peer
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._callbacks: list[Callable[[], Any]] = []
        self.headers: dict[str, str] = {}  # initial and trailing metadata, sent back as response headers

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def add_callback(self, callback: Callable[[], Any]) -> bool:
        self._callbacks.append(callback)
        return True

    def send_initial_metadata(self, metadata: Iterable[tuple[str, str]]) -> None:
        self.headers.update(metadata)

    def set_trailing_metadata(self, metadata: Iterable[tuple[str, str]]) -> None:
        self.headers.update(metadata)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str:
        return self._details

    def is_active(self) -> bool:
        return True

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details
        raise HttpAbort(code, details)

    def finish(self) -> None:
        """The call ended: run its callbacks, as gRPC does when an RPC terminates."""
        for callback in self._callbacks:
            try:
                callback()
            except Exception:  # a callback's failure must not change the answer
                LOG.exception("callback of an HTTP call failed")
        self._callbacks.clear()


@dataclass(frozen=True)
class _CallDetails:
    """grpc.HandlerCallDetails of a method called over HTTP."""

    method: str
    invocation_metadata: tuple = ()


@dataclass
class Reply:
    """An HTTP answer before Starlette sees it."""

    status: int
    body: bytes = b""
    content_type: str = JSON_TYPE
    headers: dict[str, str] | None = None


def error_reply(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    """A KServe error body."""
    return Reply(status, json.dumps({"error": message}).encode(), headers=headers)


def json_reply(document, headers: dict[str, str] | None = None) -> Reply:
    return Reply(200, json.dumps(document, separators=(",", ":")).encode(), headers=headers)


class KServeHttpApp:
    """The routes; each runs the gRPC method's handler, wrapped by the interceptor chain, on a worker thread."""

    def __init__(
        self,
        servicer: KServeServicer,
        interceptors: list[CallInterceptor],
        max_body_bytes: int,
        max_workers: int,
    ) -> None:
        self.servicer = servicer
        self.max_body_bytes = max_body_bytes
        self.stopping = threading.Event()
        self._limiter = anyio.CapacityLimiter(max_workers)
        self._handlers = {
            name: self._chained(name, getattr(servicer, name), interceptors)
            for name in (
                "ServerLive",
                "ServerReady",
                "ServerMetadata",
                "ModelReady",
                "ModelMetadata",
                "ModelConfig",
                "ModelStatistics",
                "ModelInfer",
                "RepositoryIndex",
                "RepositoryModelLoad",
                "RepositoryModelUnload",
            )
        }
        versioned = "/v2/models/{model}/versions/{version}"
        self.app = Starlette(
            routes=[
                Route("/v2", self.server_metadata, methods=["GET"]),
                Route("/v2/health/live", self.live, methods=["GET"]),
                Route("/v2/health/ready", self.ready, methods=["GET"]),
                Route("/v2/models/stats", self.stats, methods=["GET"]),
                Route("/v2/repository/index", self.repository_index, methods=["POST"]),
                Route("/v2/repository/models/{model}/load", self.load, methods=["POST"]),
                Route("/v2/repository/models/{model}/unload", self.unload, methods=["POST"]),
                *[
                    route
                    for prefix in ("/v2/models/{model}", versioned)
                    for route in (
                        Route(prefix, self.model_metadata, methods=["GET"]),
                        Route(f"{prefix}/ready", self.model_ready, methods=["GET"]),
                        Route(f"{prefix}/config", self.model_config, methods=["GET"]),
                        Route(f"{prefix}/stats", self.stats, methods=["GET"]),
                        Route(f"{prefix}/infer", self.infer, methods=["POST"]),
                    )
                ],
            ],
            exception_handlers={HTTPException: self._http_error},
        )

    @staticmethod
    def _chained(name: str, behaviour: Callable, interceptors: list[CallInterceptor]) -> Callable:
        """The method's handler wrapped by the chain, innermost last, exactly as grpc.server composes it."""
        details = _CallDetails(f"/{KSERVE_SERVICE_NAME}/{name}")
        handler = grpc.unary_unary_rpc_method_handler(behaviour)
        for interceptor in reversed(interceptors):
            handler = interceptor.intercept_service(lambda _details, inner=handler: inner, details)
        return handler.unary_unary

    async def _http_error(self, request: Request, error: HTTPException) -> Response:
        if error.status_code == 405:
            message = f"{request.method} {request.url.path}: method not allowed"
        else:
            message = f"{request.url.path}: no such KServe v2 endpoint"
        return _response(error_reply(error.status_code, message))

    # ---- one call

    async def _call(
        self,
        request: Request,
        method: str,
        build: Callable[[bytes], tuple[Any, float | None]],
        answer: Callable[[Any], Reply],
        reads_body: bool = False,
    ) -> Response:
        """Run `method` through the chain on a worker thread: `build(body)` makes its message (and a timeout in
        seconds, or None), `answer` turns its response into a Reply. Parsing and decoding run on the worker too."""
        if self.stopping.is_set():
            return _response(error_reply(503, "server shutting down: no new requests"))
        try:
            raw = await self._read(request) if reads_body else b""
        except _BodyRefused as refused:
            return _response(error_reply(refused.status, str(refused)))
        metadata = tuple(
            (key.decode("latin-1").lower(), value.decode("latin-1"))
            for key, value in request.scope.get("headers", ())
            if not key.lower().endswith(b"-bin")
        )
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        handler, peer = self._handlers[method], _peer(request)

        def run() -> Reply:
            try:
                message, timeout_s = build(self._decoded(raw, encoding) if reads_body else raw)
            except _BodyRefused as refused:
                return error_reply(refused.status, str(refused))
            except InputError as error:
                return error_reply(400, str(error))
            except Exception:  # a parsing bug must still answer in KServe's error format
                LOG.exception("KServe HTTP %s: the request could not be read", method)
                return error_reply(500, f"{method}: internal error reading the request; see the server log")
            context = HttpCall(metadata, peer, timeout_s)
            try:
                reply = answer(handler(message, context))
            except HttpAbort as error:
                reply = _aborted(error.code, error.details, context.headers)
            except Exception:
                LOG.exception("KServe HTTP %s failed", method)
                code = context.code()
                if code is not None and code != grpc.StatusCode.OK:
                    reply = _aborted(code, context.details(), context.headers)
                else:
                    reply = error_reply(500, f"{method}: internal error; see the server log")
            finally:
                context.finish()
            reply.headers = {**context.headers, **(reply.headers or {})}
            return reply

        return _response(await anyio.to_thread.run_sync(run, limiter=self._limiter))

    async def _read(self, request: Request) -> bytes:
        """The request body as sent, at most max_body_bytes; _BodyRefused says why not."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise _BodyRefused(413, f"request body of {declared} bytes; the most accepted is {self.max_body_bytes}")
        chunks, total = [], 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > self.max_body_bytes:
                raise _BodyRefused(413, f"request body over {self.max_body_bytes} bytes, the most accepted")
            chunks.append(chunk)
        return b"".join(chunks)

    def _decoded(self, body: bytes, encoding: str) -> bytes:
        """The body after its Content-Encoding (gzip, deflate), at most max_body_bytes once decoded."""
        if encoding in ("", "identity"):
            return body
        if encoding not in ("gzip", "deflate"):
            raise _BodyRefused(415, f"Content-Encoding {encoding}: not supported; send gzip, deflate or identity")
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
        try:
            plain = decoder.decompress(body, self.max_body_bytes + 1)
        except zlib.error as error:
            raise _BodyRefused(400, f"Content-Encoding {encoding}: the body does not decode ({error})") from None
        if len(plain) > self.max_body_bytes or decoder.unconsumed_tail:
            raise _BodyRefused(413, f"request body over {self.max_body_bytes} bytes once decoded, the most accepted")
        return plain

    # ---- routes

    async def live(self, request: Request) -> Response:
        message = kpb.ServerLiveRequest()
        return await self._call(request, "ServerLive", _fixed(message), lambda r: _empty(r.live, "server not live"))

    async def ready(self, request: Request) -> Response:
        message = kpb.ServerReadyRequest()
        return await self._call(request, "ServerReady", _fixed(message), lambda r: _empty(r.ready, "server not ready"))

    async def server_metadata(self, request: Request) -> Response:
        message = kpb.ServerMetadataRequest()
        return await self._call(request, "ServerMetadata", _fixed(message), lambda r: json_reply(message_json(r)))

    async def model_ready(self, request: Request) -> Response:
        name, version = _model(request)
        message = kpb.ModelReadyRequest(name=name, version=version)
        not_ready = f"model '{name}'" + (f" version '{version}'" if version else "") + " is not ready"
        return await self._call(request, "ModelReady", _fixed(message), lambda r: _empty(r.ready, not_ready))

    async def model_metadata(self, request: Request) -> Response:
        name, version = _model(request)
        message = kpb.ModelMetadataRequest(name=name, version=version)
        return await self._call(request, "ModelMetadata", _fixed(message), lambda r: json_reply(message_json(r)))

    async def model_config(self, request: Request) -> Response:
        name, version = _model(request)
        message = kpb.ModelConfigRequest(name=name, version=version)
        return await self._call(
            request, "ModelConfig", _fixed(message), lambda r: json_reply(message_json(r.config, defaults=False))
        )

    async def stats(self, request: Request) -> Response:
        name, version = _model(request)
        message = kpb.ModelStatisticsRequest(name=name, version=version)
        return await self._call(request, "ModelStatistics", _fixed(message), lambda r: json_reply(message_json(r)))

    async def infer(self, request: Request) -> Response:
        name, version = _model(request)
        accept = _accepted_encoding(request.headers.get("accept-encoding", ""))
        header = request.headers.get(HEADER_LENGTH)
        chosen: list[OutputChoice] = []

        def build(body: bytes) -> tuple[kpb.ModelInferRequest, float | None]:
            message, choice, timeout_s = infer_request(body, _header_length(header), name, version)
            chosen.append(choice)
            return message, timeout_s

        return await self._call(
            request, "ModelInfer", build, lambda r: _infer_reply(r, chosen[0], accept), reads_body=True
        )

    async def repository_index(self, request: Request) -> Response:
        def build(body: bytes) -> tuple[kpb.RepositoryIndexRequest, None]:
            ready = json_document(body, "request", ("ready",)).get("ready", False)
            if not isinstance(ready, bool):
                raise InputError(f"ready: {ready!r}; expected true or false")
            return kpb.RepositoryIndexRequest(ready=ready), None

        return await self._call(request, "RepositoryIndex", build, _index_reply, reads_body=True)

    async def load(self, request: Request) -> Response:
        name = request.path_params["model"]

        def build(body: bytes) -> tuple[kpb.RepositoryModelLoadRequest, None]:
            parameters = repository_parameters(json_document(body, "request", ("parameters",)).get("parameters", {}))
            return kpb.RepositoryModelLoadRequest(model_name=name, parameters=parameters), None

        return await self._call(request, "RepositoryModelLoad", build, lambda r: Reply(200), reads_body=True)

    async def unload(self, request: Request) -> Response:
        name = request.path_params["model"]

        def build(body: bytes) -> tuple[kpb.RepositoryModelUnloadRequest, None]:
            json_document(body, "request", ("parameters",))
            return kpb.RepositoryModelUnloadRequest(model_name=name), None

        return await self._call(request, "RepositoryModelUnload", build, lambda r: Reply(200), reads_body=True)


def _index_reply(response: kpb.RepositoryIndexResponse) -> Reply:
    return json_reply([message_json(model) for model in response.models])


def _fixed(message) -> Callable[[bytes], tuple[Any, None]]:
    """The builder of a request whose message the path alone makes (no body)."""
    return lambda _body: (message, None)


class _BodyRefused(Exception):
    """A request body refused before it was parsed (too large, an unknown encoding)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _model(request: Request) -> tuple[str, str]:
    return request.path_params.get("model", ""), request.path_params.get("version", "")


def _peer(request: Request) -> str:
    """The client as a gRPC peer string ('ipv4:1.2.3.4:5', 'ipv6:[::1]:5'), what the limits and logs key on."""
    client = request.client
    if client is None:
        return "unknown"
    host, port = client
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


def _header_length(value: str | None) -> int | None:
    """Inference-Header-Content-Length: the JSON header's size; None without the header (all JSON)."""
    if value is None:
        return None
    if not value.strip().isdigit():
        raise InputError(f"Inference-Header-Content-Length: {value!r}; expected the JSON header's size in bytes")
    return int(value)


def _empty(ok: bool, message: str) -> Reply:
    return Reply(200) if ok else error_reply(503, message)


def _aborted(code: grpc.StatusCode, details: str, headers: dict[str, str]) -> Reply:
    """The reply of a call a layer or the servicer ended with a status."""
    extra = {}
    retry_ms = headers.get(RETRY_AFTER_KEY)
    if retry_ms is not None and retry_ms.isdigit():
        extra["retry-after"] = str(max(1, math.ceil(int(retry_ms) / 1000)))
    if code == grpc.StatusCode.UNAUTHENTICATED:
        extra["www-authenticate"] = 'Bearer realm="mmfusion", ApiKey realm="mmfusion"'
    return error_reply(HTTP_STATUS.get(code, 500), details, extra)


def _accepted_encoding(header: str) -> str | None:
    """gzip or deflate when the client's Accept-Encoding takes one (q above 0), else None."""
    accepted = set()
    for part in header.split(","):
        token, _, parameters = part.partition(";")
        quality = parameters.strip().lower().removeprefix("q=")
        try:
            weight = float(quality) if parameters.strip() else 1.0
        except ValueError:
            weight = 0.0
        if weight > 0:
            accepted.add(token.strip().lower())
    return next((encoding for encoding in ("gzip", "deflate") if encoding in accepted), None)


def _infer_reply(response: kpb.ModelInferResponse, choice: OutputChoice, encoding: str | None) -> Reply:
    body, header_length = infer_response(response, choice)
    headers = {}
    if header_length is not None:
        headers["inference-header-content-length"] = str(header_length)
    if encoding == "gzip":
        compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        body = compressor.compress(body) + compressor.flush()
        headers["content-encoding"] = "gzip"
    elif encoding == "deflate":
        body = zlib.compress(body, 6)
        headers["content-encoding"] = "deflate"
    content_type = JSON_TYPE if header_length is None else BINARY_TYPE
    return Reply(200, body, content_type, headers)


def _response(reply: Reply) -> Response:
    return Response(reply.body, reply.status, headers=reply.headers or None, media_type=reply.content_type)


class KServeHttpServer:
    """The HTTP/REST front on host:port (0 = any free port), served by uvicorn in a thread of its own.

    The socket is bound here, so that a port in use fails at once with OSError; `port` is the bound one.
    With `tls` (TlsFiles), TLS 1.3 only, client certificates required when it has a client CA.
    """

    def __init__(
        self,
        servicer: KServeServicer,
        interceptors: list[CallInterceptor],
        host: str = "127.0.0.1",
        port: int = 0,
        max_body_bytes: int = 64 * 1024 * 1024,
        max_workers: int = 16,
        tls=None,
        grace_s: float = 10.0,
    ) -> None:
        self.view = KServeHttpApp(servicer, interceptors, max_body_bytes, max_workers)
        self.host = host
        self.tls = tls
        address = bare_host(host)
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        try:
            self.socket = socket.create_server(
                (address, port), family=family, dualstack_ipv6=family == socket.AF_INET6 and address == "::"
            )
        except OSError as error:
            raise OSError(f"cannot serve KServe HTTP on {host}:{port}: {error.strerror or error}") from None
        self.port = self.socket.getsockname()[1]
        config = uvicorn.Config(
            self.view.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=max(1, math.ceil(grace_s)),
            ssl_certfile=str(tls.cert) if tls is not None else None,
            ssl_keyfile=str(tls.key) if tls is not None else None,
            ssl_ca_certs=str(tls.client_ca) if tls is not None and tls.client_ca is not None else None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if tls is not None and tls.client_ca is not None else ssl.CERT_NONE,
        )
        config.load()
        if config.ssl is not None:
            config.ssl.minimum_version = ssl.TLSVersion.TLSv1_3  # as the gRPC port's nginx front: no TLS 1.2
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, name="mmfusion-kserve-http", daemon=True
        )

    @property
    def url(self) -> str:
        host = bare_host(self.host)
        host = "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else host
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        return f"{'https' if self.tls is not None else 'http'}://{host}:{self.port}"

    def start(self) -> KServeHttpServer:
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.socket.close()
                raise OSError(f"KServe HTTP: the server on {self.host}:{self.port} did not start")
            time.sleep(0.01)
        return self

    def stop_accepting(self) -> None:
        """Shutdown, first step: new requests are answered 503; those in flight go on."""
        self.view.stopping.set()

    def reload_tls(self) -> None:
        """Re-read the certificate and key files (SIGHUP); new connections get them."""
        if self.tls is not None and self.server.config.ssl is not None:
            self.server.config.ssl.load_cert_chain(str(self.tls.cert), str(self.tls.key))

    def close(self, timeout: float = 10.0) -> None:
        """Stop listening, let requests in flight finish (up to the graceful timeout), end the thread."""
        self.view.stopping.set()
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout + 2.0)
        self.socket.close()
