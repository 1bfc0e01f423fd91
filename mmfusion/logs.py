"""Logging of the command line and the service: one handler on the root logger, text or JSON lines, on stderr.

Every record carries the request id of the call it was logged for, when there is one: the server's
request-id interceptor binds it (`request_id_bound`) while the call's code runs, and a model's scheduler
binds it while it runs a batch of that one request. It travels in a context variable, so it follows
the call on its own thread and wherever the context is copied (the stream reader threads).

    text:  2025-01-31 12:00:00,123 INFO mmfusion.serving.server: serving tiny on 127.0.0.1:50051
    json:  {"time": "2025-01-31T12:00:00.123Z", "level": "INFO", "logger": "mmfusion.serving.access",
            "message": "...", "request_id": "4b1f...", "trace_id": "...", "span_id": "..."}

JSON lines also carry the trace and span ids while tracing is on, the fields a record was given with
`extra=` and, for errors, the formatted exception. `mmfusion serve` logs at INFO by default, other commands
only when asked (`--log-level`, `--log-format`, or MMFUSION_LOG_LEVEL / MMFUSION_LOG_FORMAT).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

from mmfusion import tracing

LEVELS = ("debug", "info", "warning", "error", "critical")
FORMATS = ("text", "json")
LEVEL_VARIABLE = "MMFUSION_LOG_LEVEL"
FORMAT_VARIABLE = "MMFUSION_LOG_FORMAT"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

REQUEST_ID: ContextVar[str | None] = ContextVar("mmfusion_request_id", default=None)

# LogRecord attributes every record has: any other attribute came from `extra=` and goes into a JSON line.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "request_id"}


def current_request_id() -> str | None:
    """The request id bound to this thread's context (the call being served), else None."""
    return REQUEST_ID.get()


@contextmanager
def request_id_bound(request_id: str | None) -> Iterator[None]:
    """Log records made within the with-block carry `request_id` (None: no change). Never spans a `yield`."""
    if request_id is None:
        yield
        return
    token = REQUEST_ID.set(request_id)
    try:
        yield
    finally:
        try:
            REQUEST_ID.reset(token)
        except ValueError:  # ended in another context (a generator closed elsewhere): clear it instead
            REQUEST_ID.set(None)


def parse_level(text: str | int, source: str = "--log-level") -> int:
    """A level name (any case) or number as a logging level; ValueError naming the choices otherwise."""
    if isinstance(text, int):
        return text
    if text.lower() not in LEVELS:
        raise ValueError(f"{source} {text!r}: expected one of {', '.join(LEVELS)}")
    return logging.getLevelName(text.upper())


def parse_format(text: str, source: str = "--log-format") -> str:
    """'text' or 'json' (any case); ValueError naming the choices otherwise."""
    if text.lower() not in FORMATS:
        raise ValueError(f"{source} {text!r}: expected one of {', '.join(FORMATS)}")
    return text.lower()


class ContextFilter(logging.Filter):
    """Adds the bound request id (and, while tracing, the current trace and span ids) to each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        ids = tracing.current_ids()
        if ids is not None and not hasattr(record, "trace_id"):
            record.trace_id, record.span_id = ids
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message, request_id when known, extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            entry["request_id"] = request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """TEXT_FORMAT, with ` request_id=...` after the message when the record has one."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        request_id = getattr(record, "request_id", None)
        return f"{line} request_id={request_id}" if request_id is not None else line


class StderrHandler(logging.StreamHandler):
    """A StreamHandler on whatever sys.stderr is when a record is written (pytest's capture, a redirect)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def make_handler(level: str | int = "info", fmt: str = "text") -> logging.Handler:
    """The stderr handler of `fmt` at `level`, adding request and trace ids to each record."""
    handler = StderrHandler()
    handler.setLevel(parse_level(level))
    handler.setFormatter(JsonFormatter() if parse_format(fmt) == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    handler.mmfusion = True  # type: ignore[attr-defined]  (ours: replaced, never stacked)
    return handler


@contextmanager
def configured(level: str | int = "info", fmt: str = "text") -> Iterator[logging.Handler]:
    """Log at `level` and above to stderr in `fmt` within the with-block; then the root logger is as it was.

    An earlier handler of ours on the root logger is set aside meanwhile, so handlers never stack.
    """
    handler = make_handler(level, fmt)
    root = logging.getLogger()
    previous_level = root.level
    ours = [existing for existing in root.handlers if getattr(existing, "mmfusion", False)]
    for existing in ours:
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(handler.level)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(previous_level)
        for existing in ours:
            root.addHandler(existing)


def settings(
    level: str | None, fmt: str | None, default_level: str | None, environ: dict[str, str] | None = None
) -> tuple[int, str] | None:
    """(level, format) from the flags, else MMFUSION_LOG_LEVEL / MMFUSION_LOG_FORMAT, else the command's default;
    None when nothing asks for logging (default_level None, no flag, no variable): Python's defaults stay."""
    environ = dict(os.environ) if environ is None else environ
    level_source = "--log-level" if level else LEVEL_VARIABLE
    format_source = "--log-format" if fmt else FORMAT_VARIABLE
    level = level or environ.get(LEVEL_VARIABLE) or None
    fmt = fmt or environ.get(FORMAT_VARIABLE) or None
    if level is None and fmt is None and default_level is None:
        return None
    return parse_level(level or default_level or "warning", level_source), parse_format(fmt or "text", format_source)


def user_warning(logger: logging.Logger, message: str) -> None:
    """A warning for the person who ran a command: `mmfusion: WARNING: ...` on stderr, or a JSON log line
    when logs are JSON (so that stderr stays machine-readable)."""
    root = logging.getLogger()
    if any(isinstance(getattr(h, "formatter", None), JsonFormatter) for h in root.handlers):
        logger.warning(message)
    else:
        print(f"mmfusion: WARNING: {message}", file=sys.stderr, flush=True)
