"""Build and run the gRPC server: Inspection and KServe services, health, reflection, metrics, graceful stop."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mmfusion.proto import inspection_pb2 as pb
from mmfusion.proto import inspection_pb2_grpc as pb_grpc
from mmfusion.runtime.threads import share_cores
from mmfusion.security.auth import AuthConfig
from mmfusion.security.limits import RateLimit
from mmfusion.security.network import TrustedProxies
from mmfusion.security.tls import NginxFront, TlsFiles, find_nginx
from mmfusion.serving.cache import ResultCache
from mmfusion.serving.interceptors import ServerSecurity, TelemetryInterceptor, build_interceptors, build_security
from mmfusion.serving.interceptors.guard import DEFAULT_MAX_OPEN_STREAMS, StreamGuard
from mmfusion.serving.kserve import KSERVE_SERVICE_NAME, add_kserve_to_server
from mmfusion.serving.kserve_http import KServeHttpServer
from mmfusion.serving.memory import ReleasingExecutor
from mmfusion.serving.metrics import ServiceMetrics
from mmfusion.serving.models import MIN_GRACE_SECONDS, ModelManager
from mmfusion.serving.policy import ServingOverrides
from mmfusion.serving.scheduler import BatchingConfig
from mmfusion.serving.servicer import DEFAULT_MAX_AUDIO_BYTES, InspectionServicer
from mmfusion.serving.stream_limits import DEFAULT_FIRST_MESSAGE_TIMEOUT_S, DEFAULT_IDLE_TIMEOUT_S

LOG = logging.getLogger(__name__)
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Inspection"].full_name
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
DEFAULT_CACHE_BYTES = 64 * 1024 * 1024
DEFAULT_GRACE_SECONDS = 10.0


class InspectionServer:
    """A started-or-not gRPC server with its model manager, health servicer, metrics and result cache."""

    def __init__(
        self,
        grpc_server: grpc.Server,
        port: int,
        models: ModelManager,
        health_servicer,
        metrics: ServiceMetrics,
        cache: ResultCache,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
        security: ServerSecurity | None = None,
        front: NginxFront | None = None,
        guard: StreamGuard | None = None,
        http: KServeHttpServer | None = None,
    ) -> None:
        self.grpc_server = grpc_server
        self.guard = guard  # the streaming calls' pool, cap and time limits
        self.http = http  # KServe v2 HTTP/REST on a second port (None: off)
        self.http_port = http.port if http is not None else None
        self.port = front.port if front is not None else port  # where clients connect
        self.grpc_port = port  # the gRPC server's own port: loopback behind the TLS front
        self.front = front
        self.models = models
        self.health = health_servicer
        self.metrics = metrics
        self.cache = cache
        self.metrics_port = metrics_port  # the bound port once started (0 asks for any free port)
        self._metrics_host = metrics_host
        self.security = security
        self._stopped = threading.Event()

    def reload_security(self) -> bool:
        """Re-read the API key and policy files (SIGHUP); a broken file keeps the previous contents."""
        return self.security.reload() if self.security is not None else True

    def start(self) -> InspectionServer:
        """Serve /metrics (when a metrics port was given), then gRPC."""
        if self.metrics_port is not None:
            try:
                self.metrics_port = self.metrics.start_http(self.metrics_port, addr=self._metrics_host)
            except OSError as error:
                self.stop(grace=0)
                raise OSError(f"cannot serve metrics on {self._metrics_host}:{self.metrics_port}: {error}") from None
        self.grpc_server.start()
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        self.health.set(KSERVE_SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        if self.http is not None:
            try:
                self.http.start()
            except OSError:
                self.stop(grace=0)
                raise
        if self.front is not None:
            try:
                self.front.start()
            except RuntimeError as error:
                self.stop(grace=0)
                raise OSError(
                    f"cannot start the TLS front on {self.front.listen_address}:{self.port}: {error}"
                ) from None
        return self

    def stop(self, grace: float | None = DEFAULT_GRACE_SECONDS) -> None:
        """Report NOT_SERVING, refuse new calls, finish in-flight calls and queued work within grace, unload models."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        deadline = time.monotonic() + (grace or 0.0)
        self.health.enter_graceful_shutdown()
        if self.http is not None:  # new HTTP requests are answered 503; those in flight go on
            self.http.stop_accepting()
        if self.guard is not None:  # open streams take no more frames: they answer those they took and end
            self.guard.stop_accepting()
        self.grpc_server.stop(grace).wait()  # calls in flight wait on their queued work, which keeps being served
        if self.http is not None:
            self.http.close(max(deadline - time.monotonic(), MIN_GRACE_SECONDS))
        if self.guard is not None:
            self.guard.close()
        if self.front is not None:
            self.front.stop()  # after the calls it carries
        self.models.close(max(deadline - time.monotonic(), MIN_GRACE_SECONDS))
        self.metrics.stop_http()
        if self.security is not None:
            self.security.close()  # after the models, so their unload events are audited

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server stops; True if it did within timeout."""
        return self.grpc_server.wait_for_termination(timeout)

    def __enter__(self) -> InspectionServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop(grace=1.0)


def _on_model_change(
    health_servicer, manager: ModelManager, metrics: ServiceMetrics, cache: ResultCache, per_model_health: bool = True
) -> Callable[[str, bool], None]:
    """Per-model health (not with auth: health is anonymous), the models gauge, a cache that forgets unloaded models."""

    def on_change(name: str, loaded: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if loaded else health_pb2.HealthCheckResponse.NOT_SERVING
        if per_model_health:
            health_servicer.set(name, status)
        metrics.set_models_loaded(len(manager.loaded_names()))
        if not loaded:
            cache.clear()  # a model reloaded under the same version may have new weights

    return on_change


def build_server(
    models: Sequence[str | Path] = (),
    port: int = 0,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    host: str = "127.0.0.1",
    model_root: str | Path | None = None,
    backend: str | None = None,
    max_workers: int = 16,
    max_audio_bytes: int = DEFAULT_MAX_AUDIO_BYTES,
    max_batch_size: int | None = None,
    max_queue_delay_us: int | None = None,
    preferred_batch_sizes: Sequence[int] | None = None,
    max_queue_size: int | None = None,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    no_cache_models: Sequence[str] = (),
    metrics_port: int | None = None,
    auth: AuthConfig | None = None,
    policy_path: str | Path | None = None,
    audit_path: str | Path | None = None,
    rate_limit: RateLimit | None = None,
    tls: TlsFiles | None = None,
    metrics_host: str = "127.0.0.1",
    trusted_proxies: Sequence[str] = (),
    audit_cipher=None,
    audit_fsync: str = "always",
    audit_fail_closed: bool = False,
    audit_new_segment: bool = False,
    require_manifest: bool = False,
    max_open_streams: int = DEFAULT_MAX_OPEN_STREAMS,
    first_message_timeout_s: float = DEFAULT_FIRST_MESSAGE_TIMEOUT_S,
    stream_idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
    http_port: int | None = None,
    audit_node_id: str | None = None,
    threads: int | None = None,
) -> InspectionServer:
    """Load the models (names in the repository or folders), bind host:port (0 = any free port); not started.

    Every loaded model gets a scheduler set by its config's `serving:` block; a batching limit given
    here (not None) overrides that field for every model, and fields neither sets take the built-in
    defaults (bad limits raise ValueError naming the model). Inspect results are cached in
    `cache_bytes` (0 disables the cache) except for the models named in `no_cache_models`;
    `metrics_port` (0 = any free port) serves Prometheus /metrics on the same host once started.

    Security (all off by default): `auth` authenticates every call (API keys / JWT), `policy_path`
    is the RBAC policy (the built-in example policy when auth is given without one), `audit_path`
    an audit log (fields encrypted with `audit_cipher`, a FieldCipher, when given; `audit_fsync`
    "never" trades durability of the last events for throughput), `rate_limit`
    per-caller call rate and stream cap. `metrics_host` is where /metrics listens (plaintext, loopback
    by default). `tls` serves TLS 1.3 only: the gRPC server binds a free loopback port and an nginx
    front (NginxFront, started and stopped with the server) listens on host:port; `server.port` is
    the front's. Without auth, rate limits key on the client address that a trusted proxy forwards
    (`trusted_proxies`: addresses or CIDRs; the front itself is trusted), else on the peer's host.
    Per-model health (grpc.health.v1 with the model's name) is published only without auth: health
    needs no credentials, so with auth it would tell anyone which models exist.
    `require_manifest` refuses every model folder without a sha256 manifest.json, at start-up and on
    LoadModel (`mmfusion serve` turns it on; the Python default keeps unsigned folders loadable).
    The audit chain is keyed (HMAC) by `audit_cipher`'s key store; `audit_fail_closed` ends a call
    UNAVAILABLE when its event cannot be written (default: logged, counted, served); `audit_new_segment`
    opens a log that no longer reaches its head checkpoint, with the loss on the record; `audit_node_id`
    (serve: --node-id, default the host name) names this replica in every audit record.

    Threads: unary calls run on `max_workers` threads; streaming calls on a pool of their own, at most
    `max_open_streams` at once (RESOURCE_EXHAUSTED beyond), so open streams never starve health,
    listings or Inspect. A client stream must send its first message within `first_message_timeout_s`
    and then one at least every `stream_idle_timeout_s` (DEADLINE_EXCEEDED otherwise); on stop, open
    streams take no new messages, answer those they took and end UNAVAILABLE. `threads` (None: each
    model's `runtime:` block) sets every backend's intra-op threads, e.g. 1 for a replica pinned to one core.

    `http_port` (None: off; 0 = any free port) also serves KServe v2 over HTTP/REST on host:http_port
    (kserve_http.py): the same servicer behind the same interceptor chain; with `tls`, TLS 1.3 of its own.
    """
    if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
        raise ValueError(f"max_workers={max_workers!r}: expected a whole number of threads >= 1")
    guard = StreamGuard(max_open_streams, first_message_timeout_s, stream_idle_timeout_s)  # checks its limits
    preferred = None if preferred_batch_sizes is None else tuple(preferred_batch_sizes)
    batching = ServingOverrides(max_batch_size, max_queue_delay_us, preferred, max_queue_size)
    flags = batching.given()
    flags.setdefault("max_batch_size", max((*flags.get("preferred_batch_sizes", ()), 1)))
    BatchingConfig(**flags)  # limits that cannot work fail here, before any model loads
    metrics = ServiceMetrics()
    cache = ResultCache(cache_bytes, sizeof=len)  # the cache holds serialized InspectionResults
    manager = ModelManager(
        model_root, batching=batching, metrics=metrics, require_manifest=require_manifest, threads=threads
    )
    health_servicer = health.HealthServicer()
    if tls is not None and find_nginx() is None:
        raise OSError(
            "TLS needs nginx for its TLS-1.3-only front (grpcio cannot refuse TLS 1.2); "
            "install it (Debian: apt-get install nginx-light, or make system-deps)"
        )
    manager.add_listener(_on_model_change(health_servicer, manager, metrics, cache, per_model_health=auth is None))
    proxies = TrustedProxies(trusted_proxies, front=tls is not None)
    security = build_security(
        auth,
        policy_path,
        audit_path,
        rate_limit,
        audit_cipher,
        audit_fsync,
        proxies=proxies or None,
        audit_fail_closed=audit_fail_closed,
        audit_new_segment=audit_new_segment,
        metrics=metrics,
        audit_node_id=audit_node_id,
    )
    if security is not None:
        manager.add_listener(security.on_model_change)
    try:
        for model in models:
            manager.load(model, backend=backend, allow_path=True)
    except BaseException:
        manager.close(0)
        if security is not None:
            security.close()
        raise
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    metrics.watch_streams(lambda: guard.open_streams)
    metrics.watch_schedulers(lambda: [(entry.name, entry.version, entry.scheduler) for entry in manager.loaded()])
    telemetry = TelemetryInterceptor(metrics, known_model=lambda name: name in manager.loaded_names())
    chain = build_interceptors(security, telemetry)  # also in front of the KServe HTTP port
    interceptors = [guard, *chain]  # the guard outermost: it picks the thread pool
    server = grpc.server(ReleasingExecutor(max_workers), options=options, interceptors=interceptors)
    servicer = InspectionServicer(manager, max_audio_bytes, metrics, cache, frozenset(no_cache_models))
    pb_grpc.add_InspectionServicer_to_server(servicer, server)
    kserve = add_kserve_to_server(manager, server, metrics)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    services = (SERVICE_NAME, KSERVE_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(services, server)
    grpc_host, grpc_port = ("127.0.0.1", 0) if tls is not None else (host, port)  # behind the front: loopback only
    front = http = None
    try:
        bound = server.add_insecure_port(f"{grpc_host}:{grpc_port}")
    except RuntimeError as error:
        bound, reason = 0, str(error)
    else:
        reason = "the address is in use or not available"
    try:
        if bound == 0:
            raise OSError(f"cannot listen on {grpc_host}:{grpc_port}: {reason}")
        if tls is not None:
            front = NginxFront(
                port, bound, tls.cert, tls.key, tls.client_ca, listen_address=host, max_body_bytes=max_message_bytes
            )
        if http_port is not None:
            http = KServeHttpServer(kserve, chain, host, http_port, max_message_bytes, max_workers, tls)
    except BaseException:
        manager.close(0)
        if security is not None:
            security.close()
        raise
    parts = (server, bound, manager, health_servicer, metrics, cache, metrics_port, metrics_host, security, front)
    return InspectionServer(*parts, guard, http)


def serve(
    models: Sequence[str | Path],
    port: int,
    host: str = "127.0.0.1",
    grace: float = DEFAULT_GRACE_SECONDS,
    **options,
) -> int:
    """Run until SIGTERM or SIGINT, then stop gracefully; SIGHUP re-reads keys, policy and TLS certificate files.

    Returns the exit status: 0, or 1 when the TLS front (nginx) died, which stops the server too.
    """
    share_cores()  # frames decode on the stream threads, in parallel with the backends
    server = build_server(models, port=port, host=host, **options).start()
    stop_requested, reload_requested = threading.Event(), threading.Event()
    wake = threading.Event()

    def request(event: threading.Event):
        def handler(*_) -> None:
            event.set()
            wake.set()

        return handler

    handlers = {signal.SIGTERM: request(stop_requested), signal.SIGINT: request(stop_requested)}
    if server.security is not None or server.front is not None:
        handlers[signal.SIGHUP] = request(reload_requested)
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    loaded = ", ".join(server.models.loaded_names()) or "no models"
    front = f" (TLS 1.3 only, nginx front; gRPC on 127.0.0.1:{server.grpc_port})" if server.front else ""
    LOG.info("serving %s on %s:%d%s", loaded, host, server.port, front)
    if server.metrics_port is not None:
        metrics_host = options.get("metrics_host", "127.0.0.1")
        LOG.info("metrics on http://%s:%d/metrics", metrics_host, server.metrics_port)
    if server.http is not None:
        LOG.info("KServe v2 HTTP/REST on %s:%d", host, server.http_port)
    status = 0
    try:
        while not stop_requested.is_set():
            wake.wait(0.5)
            wake.clear()
            if server.front is not None and not server.front.running():
                log = " ".join(server.front.error_log().split())[-400:] or "no log"
                LOG.error("the TLS front (nginx) exited; stopping: %s", log)
                status = 1
                break
            if reload_requested.is_set():
                reload_requested.clear()
                if server.security is not None:
                    if server.reload_security():
                        LOG.info("reloaded keys and access policy")
                    else:
                        LOG.warning("kept the previous keys and access policy")
                if server.front is not None:
                    server.front.reload()
                    LOG.info("the TLS front re-read its certificate files")
                if server.http is not None and server.http.tls is not None:
                    server.http.reload_tls()
                    LOG.info("the KServe HTTP port re-read its certificate files")
    finally:
        server.stop(grace)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    LOG.info("server stopped")
    return status
