"""OpenTelemetry traces: off until `configure` (nothing recorded, opentelemetry not even imported), then exported.

One tracer for the process. The service opens a span per RPC (serving/interceptors/telemetry.py), records
each item's wait in its model's queue and each batch it ran in (serving/scheduler.py), and each backend
call under its batch (pipeline.py, serving/batching.py):

    mmfusion.v1.Inspection/Inspect      SERVER, on the RPC thread, continuing a caller's `traceparent`
      queue                             the item's wait, from submit to its batch's start (scheduler thread)
      batch                             child of its first item's RPC, linked to every item's
        backend.run                     the graph on the model's backend

`configure(endpoint)` exports over OTLP/gRPC (the OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or
OTEL_EXPORTER_OTLP_ENDPOINT environment variable when no endpoint is given); `configure(exporter=...)`
hands spans to any SpanExporter (tests: an InMemorySpanExporter). The standard OTEL_SERVICE_NAME,
OTEL_RESOURCE_ATTRIBUTES and OTEL_TRACES_SAMPLER(_ARG) variables apply. While tracing is off every
function here returns at once: `span()` a shared no-op context manager, `start_span()` None.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from mmfusion import __version__

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
DEFAULT_SERVICE_NAME = "mmfusion"
INSTRUMENTATION = "mmfusion"
REQUEST_ID_ATTRIBUTE = "mmfusion.request_id"
MODEL_ATTRIBUTE = "mmfusion.model"

Attributes = Mapping[str, Any]

_NOTHING: AbstractContextManager[None] = nullcontext()
_lock = threading.Lock()
_tracer: Any = None  # an opentelemetry Tracer while tracing is on
_provider: Any = None  # its TracerProvider (flushed and shut down by `shutdown`)


def enabled() -> bool:
    """Whether spans are recorded now."""
    return _tracer is not None


def endpoint_from_environment(environ: Mapping[str, str] | None = None) -> str | None:
    """The OTLP endpoint the standard environment variables name (the traces-only one first), else None."""
    environ = os.environ if environ is None else environ
    return next((environ[name] for name in ENDPOINT_VARIABLES if environ.get(name)), None)


def configure(
    endpoint: str | None = None, *, exporter: Any = None, service_name: str | None = None, batch: bool = True
) -> bool:
    """Record spans from now on and export them; False (and tracing stays as it was) when there is nowhere to.

    `exporter` (a SpanExporter) takes precedence; else OTLP over gRPC to `endpoint`, else to the endpoint of
    the environment. `batch` exports from a background thread (BatchSpanProcessor); False exports each span
    as it ends (tests). A second call replaces the first configuration, which is flushed and shut down.
    """
    if exporter is None:
        endpoint = endpoint or endpoint_from_environment()
        if not endpoint:
            return False
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=endpoint)
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    attributes = {"service.version": __version__}
    if service_name or not os.environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = service_name or DEFAULT_SERVICE_NAME
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
    global _tracer, _provider
    with _lock:
        previous = _provider
        _provider, _tracer = provider, provider.get_tracer(INSTRUMENTATION, __version__)
    if previous is not None:
        previous.shutdown()
    return True


def shutdown() -> None:
    """Stop recording; spans not yet exported are flushed first (within the exporter's timeout)."""
    global _tracer, _provider
    with _lock:
        provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()


def _kind(name: str | None) -> Any:
    from opentelemetry.trace import SpanKind

    return SpanKind[name.upper()] if name else SpanKind.INTERNAL


def _links(parents: Sequence[Any]) -> list:
    from opentelemetry import trace

    return [trace.Link(trace.get_current_span(parent).get_span_context()) for parent in parents]


def span(name: str, attributes: Attributes | None = None, **options: Any) -> AbstractContextManager[Any]:
    """A span current within the with-block (it yields the span; an escaping exception is recorded on it).

    Options are `Tracer.start_as_current_span`'s (`kind` as a name: "server", "internal"...; `links` as
    parent contexts). A no-op context manager yielding None while tracing is off.
    """
    tracer = _tracer
    if tracer is None:
        return _NOTHING
    options = _options(options)
    return tracer.start_as_current_span(name, attributes=dict(attributes or {}), **options)


def start_span(
    name: str, attributes: Attributes | None = None, parent: Any = None, links: Sequence[Any] = (), **options: Any
) -> Any:
    """A started span that is not current anywhere (end it with `end`); None while tracing is off.

    `parent` and `links` are contexts (`current_context()`, `extract(...)`), so a span can continue work
    begun on another thread; `start_time` (time.time_ns()) backdates it.
    """
    tracer = _tracer
    if tracer is None:
        return None
    options = _options({**options, "links": links})
    return tracer.start_span(name, context=parent, attributes=dict(attributes or {}), **options)


def _options(options: dict[str, Any]) -> dict[str, Any]:
    """Span options with `kind` as a SpanKind and `links` as Links."""
    options = dict(options)
    options["kind"] = _kind(options.get("kind"))
    if options.get("links"):
        options["links"] = _links(options["links"])
    else:
        options.pop("links", None)
    return options


def record_span(
    name: str, start_ns: int, end_ns: int, parent: Any = None, attributes: Attributes | None = None
) -> None:
    """A span of work already done, from start_ns to end_ns (time.time_ns()); nothing while tracing is off."""
    started = start_span(name, attributes, parent=parent, start_time=start_ns)
    if started is not None:
        started.end(end_time=max(end_ns, start_ns))


def use(started: Any) -> AbstractContextManager[Any]:
    """Make a span from `start_span` current within the with-block, without ending it; a no-op for None."""
    if started is None:
        return _NOTHING
    from opentelemetry import trace

    return trace.use_span(started, end_on_exit=False, record_exception=False, set_status_on_exception=False)


def end(started: Any, error: BaseException | None = None, message: str = "") -> None:
    """End a span from `start_span`; with an error (or a message), mark it failed first. None: nothing."""
    if started is None:
        return
    if error is not None or message:
        fail(started, error, message)
    started.end()


def fail(started: Any, error: BaseException | None = None, message: str = "") -> None:
    """Mark a span failed (status ERROR with a description; the exception recorded when given)."""
    if started is None:
        return
    from opentelemetry.trace import Status, StatusCode

    if error is not None and not isinstance(error, GeneratorExit):
        started.record_exception(error)
    started.set_status(Status(StatusCode.ERROR, message or (f"{type(error).__name__}: {error}" if error else "")))


def current_context() -> Any:
    """The current trace context (to parent work handed to another thread); None while tracing is off."""
    if _tracer is None:
        return None
    from opentelemetry import context

    return context.get_current()


def extract(carrier: Mapping[str, str] | Sequence[tuple[str, Any]]) -> Any:
    """The trace context a caller sent (W3C `traceparent` / `tracestate` headers or gRPC metadata); None if off."""
    if _tracer is None:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    headers = dict(carrier) if not isinstance(carrier, Mapping) else carrier
    headers = {key.lower(): value for key, value in headers.items() if isinstance(value, str)}
    return TraceContextTextMapPropagator().extract(headers)


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the span current on this thread, for log lines; None without one."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


@contextmanager
def configured(**options: Any) -> Iterator[bool]:
    """`configure(**options)` for the with-block, then `shutdown()` (when it configured anything)."""
    done = configure(**options)
    try:
        yield done
    finally:
        if done:
            shutdown()
