"""Structured JSON logs for every process, carrying the task id and the trace id.

The task id and traceparent live in context variables: set once where a
request or message enters (the gateway middleware, the bus subscriber),
they follow the code into awaited calls and ``asyncio.to_thread`` workers, so
every line logged on behalf of a task says which one without threading ids
through every call.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from infra.telemetry.tracing import trace_id_of

task_id_var: ContextVar[str | None] = ContextVar("radtrain_task_id", default=None)
traceparent_var: ContextVar[str | None] = ContextVar("radtrain_traceparent", default=None)

_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "service", "task_id", "trace_id"}


@contextmanager
def log_context(*, task_id: str | None = None, traceparent: str | None = None) -> Iterator[None]:
    """Tag the log lines of one request or message; restores the outer values after."""
    tokens = []
    if task_id is not None:
        tokens.append((task_id_var, task_id_var.set(task_id)))
    if traceparent is not None:
        tokens.append((traceparent_var, traceparent_var.set(traceparent)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


_URL_CREDENTIALS = re.compile(r"(\b[a-z][\w+.-]*://)[^/\s:@'\"]+(?::[^/\s@'\"]*)?@",
                              re.IGNORECASE)


def redact_credentials(text: str) -> str:
    """``nats://user:password@host`` -> ``nats://<redacted>@host`` (issue 17)."""
    return _URL_CREDENTIALS.sub(lambda m: f"{m.group(1)}<redacted>@", text)


def redact_record(record: logging.LogRecord) -> None:
    """Credentials in URLs never reach a log line, whoever logged them."""
    try:
        message = record.getMessage()
    except Exception:  # a malformed call: logging reports it itself
        return
    clean = redact_credentials(message)
    if clean != message:
        record.msg, record.args = clean, ()


class ContextFilter(logging.Filter):
    """Copies the context variables onto each record (text and JSON formats alike)."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        record.service = self.service
        record.task_id = task_id_var.get()
        record.trace_id = trace_id_of(traceparent_var.get())
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``extra={...}`` fields are kept as keys."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "service": getattr(record, "service", None),
            "msg": record.getMessage(),
            "task_id": getattr(record, "task_id", None),
            "trace_id": getattr(record, "trace_id", None),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(service: str, *, fmt: str = "json", level: str = "INFO") -> None:
    """Called once by each process's ``main()``: replaces the root handlers."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter(service))
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(service)s %(name)s %(levelname)s [task=%(task_id)s "
            "trace=%(trace_id)s] %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
