"""structlog JSON logging with the request id and the trace id on every line.

Standard-library loggers (uvicorn, Celery, SQLAlchemy) go through the same processors, so a process writes
one JSON object per line on stdout whatever the source. Keys that look like credentials are redacted
before rendering, so a careless ``log.info(..., password=...)`` cannot leak one.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

from parley_common.telemetry import current_trace_ids

_SECRET_KEYS = re.compile(r"pass(word)?|secret|token|authorization|api_?key|cookie|credential", re.IGNORECASE)
_REDACTED = "[redacted]"


def _add_trace_ids(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    ids = current_trace_ids()
    if ids is not None:
        event.setdefault("trace_id", ids[0])
        event.setdefault("span_id", ids[1])
    return event


def _redact(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    for key in list(event):
        # Counters such as "prompt_tokens" are numbers, not credentials.
        if (
            _SECRET_KEYS.search(key)
            and not isinstance(event[key], int | float | bool)
            and event[key] is not None
        ):
            event[key] = _REDACTED
    return event


def _static(fields: dict[str, str]) -> Processor:
    def add(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
        for key, value in fields.items():
            event.setdefault(key, value)
        return event

    return add


class _NamedWriteLogger(structlog.WriteLogger):
    """structlog's stdout writer with a name, which ``add_logger_name`` puts on the line as ``logger``."""

    def __init__(self, name: str | None) -> None:
        super().__init__(sys.stdout)
        self.name = name or "root"


def configure_logging(
    service: str, process: str, *, level: str = "INFO", fmt: str = "json", region: str | None = None
) -> None:
    """Route structlog and the standard library through one JSON (or console) renderer on stdout."""
    static = {"service": service, "process": process}
    if region:
        static["region"] = region
    enrich: list[Processor] = [
        _add_trace_ids,
        _static(static),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    # Parley's own lines go straight from structlog to stdout: through the standard library they cost
    # three times as much (a LogRecord, a handler lock, a formatter), on the access line of every request.
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.stdlib.add_logger_name,
            *enrich,
            *([structlog.processors.format_exc_info] if fmt == "json" else []),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=_NamedWriteLogger,
        cache_logger_on_first_use=True,
    )
    # Other libraries' lines (uvicorn, Celery, SQLAlchemy) take the standard library's path to the same
    # processors and stdout.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            *enrich,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # warnings become log lines too, not bare stderr text
    # uvicorn installs its own handlers; send everything through ours. Our middleware writes the access
    # line (with request and trace ids), so uvicorn's own access log is off.
    for name in ("uvicorn", "uvicorn.error", "celery", "celery.worker", "celery.app.trace"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("aiormq").setLevel(logging.WARNING)
    logging.getLogger("aio_pika").setLevel(logging.WARNING)


def get_logger(name: str | None = None, **initial: Any) -> FilteringBoundLogger:
    """A structlog logger; ``initial`` key/values are bound to every line it writes."""
    logger: FilteringBoundLogger = structlog.get_logger(name, **initial)
    return logger


def bind_context(**values: Any) -> None:
    """Bind key/values (request_id, event_id, …) to every log line of the current task or request."""
    structlog.contextvars.bind_contextvars(**values)


def clear_context() -> None:
    """Forget what :func:`bind_context` bound (start of a request or task)."""
    structlog.contextvars.clear_contextvars()


def scrub_headers(headers: MutableMapping[str, str]) -> dict[str, str]:
    """A copy of HTTP headers safe to log: credentials replaced."""
    return {k: (_REDACTED if _SECRET_KEYS.search(k) else v) for k, v in headers.items()}
