"""Structured logs: one JSON object a line, with the request id of the RPC being served."""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import threading
from datetime import UTC, datetime
from types import TracebackType

from opentelemetry import trace

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

# uvicorn's color_message repeats msg with terminal colour codes.
_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}
# Where ACCESS_LOG=true writes one line per RPC or HTTP request: one name to route or filter.
ACCESS_LOGGER = "stylebase.access"
# Libraries whose INFO lines narrate their own machinery (alembic: every plugin it sets up,
# the dialect it picked); their warnings and errors pass, and LOG_LEVEL=DEBUG shows it all.
_CHATTY = ("alembic",)


def new_request_id() -> str:
    """32 random hex digits, as a uuid4's hex, for a fraction of its cost."""
    return os.urandom(16).hex()


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        # The trace this line belongs to, when the RPC is traced (here or by its caller).
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = trace.format_trace_id(span.trace_id)
            entry["span_id"] = trace.format_span_id(span.span_id)
        # Fields passed with extra={...} travel as top-level keys.
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        # Tracebacks stay inside the line: a log shipper splits on newlines.
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__(f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = request_id_var.get()
        return f"{line} [request_id={request_id}]" if request_id else line


def configure_logging(
    service: str, level: str = "INFO", fmt: str = "json", *, access_log: bool = False
) -> None:
    """Every line of the process through one handler on stderr, in one format.

    Besides the loggers, that takes in what Python would print by itself: warnings,
    exceptions nothing caught (main thread or others) and those raised where none can be
    (a __del__, a callback).
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else TextFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in _CHATTY:
        logging.getLogger(name).setLevel(logging.NOTSET if level == "DEBUG" else logging.WARNING)
    # Asked for explicitly, the access lines come whatever LOG_LEVEL filters.
    logging.getLogger(ACCESS_LOGGER).setLevel(logging.INFO if access_log else logging.NOTSET)
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread
    sys.unraisablehook = _log_unraisable


def _log_uncaught(
    kind: type[BaseException], value: BaseException, traceback: TracebackType | None
) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, traceback)
        return
    logging.getLogger("stylebase").critical("uncaught exception", exc_info=(kind, value, traceback))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None or issubclass(args.exc_type, SystemExit):
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("stylebase").error(
        "uncaught exception in thread %s",
        name,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def _log_unraisable(args: sys.UnraisableHookArgs) -> None:
    if args.exc_value is None:
        return
    logging.getLogger("stylebase").error(
        "%s: %r",
        args.err_msg or "exception ignored",
        args.object,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )
