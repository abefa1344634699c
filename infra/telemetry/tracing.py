"""W3C trace context (``traceparent``): parse, create, and derive a child.

No tracing SDK: the trace id is what ties one task's HTTP request, events and
log lines together, and a string in the event envelope is enough to carry it.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


@dataclass(frozen=True)
class TraceParent:
    trace_id: str
    span_id: str
    flags: str = "01"

    def __str__(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    def child(self) -> TraceParent:
        """Same trace, new span: the hop this process adds."""
        return TraceParent(self.trace_id, secrets.token_hex(8), self.flags)


def parse_traceparent(value: str | None) -> TraceParent | None:
    """A valid header, or ``None`` (the spec says: ignore an invalid one, start anew)."""
    if not value:
        return None
    match = _TRACEPARENT.match(value.strip().lower())
    if not match:
        return None
    version, trace_id, span_id, flags = match.groups()
    if version == "ff" or trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return TraceParent(trace_id, span_id, flags)


def new_traceparent() -> TraceParent:
    return TraceParent(secrets.token_hex(16), secrets.token_hex(8))


def trace_id_of(value: str | None) -> str | None:
    parsed = parse_traceparent(value)
    return parsed.trace_id if parsed else None
