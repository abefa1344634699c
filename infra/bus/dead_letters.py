"""The ``DLQ`` stream's contract: subjects, headers, and how a dead letter is built.

A dead letter is the original message's bytes on ``dlq.<consumer>.<task_id>``
with headers naming where it came from and why it died (DESIGN.md §4). The
forwarder (handlers/dead_letter_forwarder.py) builds them with
:func:`build_dead_letter`; the on-call verbs over them (list, show, redrive,
purge) are radtrain/oncall/dead_letter_ops.py.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from infra.bus.topology import (
    DISPATCH_STREAM,
    DISPATCHER,
    DLQ_STREAM,
    ENRICH,
    TASKS_STREAM,
    is_runner_consumer,
)
from schemas.cloudevents import event_bytes, event_dict
from schemas.common import is_identifier
from schemas.events import parse_event

H_STREAM = "Radtrain-Dlq-Stream"
H_SEQ = "Radtrain-Dlq-Seq"
H_SUBJECT = "Radtrain-Dlq-Subject"
H_CONSUMER = "Radtrain-Dlq-Consumer"
H_DELIVERIES = "Radtrain-Dlq-Deliveries"
H_REASON = "Radtrain-Dlq-Reason"
H_ERROR = "Radtrain-Dlq-Error"
H_MSG_ID = "Radtrain-Dlq-Msg-Id"
H_TASK = "Radtrain-Dlq-Task"
H_ORIGINAL_TIME = "Radtrain-Dlq-Original-Time"
H_MISSING = "Radtrain-Dlq-Original-Missing"
REPLAY_OF = "Radtrain-Replay-Of"
"""On a re-published event: ``<stream>:<seq>`` of the message it copies."""
REDRIVE_OF = "Radtrain-Redrive-Of"
MSG_ID = "Nats-Msg-Id"

Kind = Literal["max_deliveries", "terminated"]
MAX_HEADER_CHARS = 1000

TASK_OWNERS = frozenset({ENRICH, DISPATCHER})
"""Consumers that move a task forward (with every ``runner-<pool>``: :func:`owns_task`):
their dead letter fails the task, and redriving one for a finished task changes
nothing (forward-only state, the runner's fence)."""
TASK_STREAMS = frozenset({TASKS_STREAM, DISPATCH_STREAM})
"""Where a task owner's messages are: ``TASKS``, and ``DISPATCH`` for the runners."""


def owns_task(consumer: str, stream: str) -> bool:
    """Does a dead letter of ``consumer`` on ``stream`` leave its task stuck (so it fails
    the task, and a redrive re-opens it)?"""
    return stream in TASK_STREAMS and (consumer in TASK_OWNERS or is_runner_consumer(consumer))
TERMINAL_EVENTS = ("completed", "failed", "cancelled", "rejected")


async def finished(js: JetStreamContext, task_id: str, *, other_than: int | None = None,
                   generation: int = 1) -> str | None:
    """The terminal event the stream holds for the task (not the lagging KV), if any;
    ``other_than`` skips one stream sequence (a malformed message on a terminal subject).
    Only an event of ``generation`` or later counts: one that ended an earlier generation
    no longer ends a task on-call has re-opened."""
    for name in TERMINAL_EVENTS:
        try:
            raw = await js.get_last_msg(TASKS_STREAM, f"tasks.{name}.{task_id}")
        except NotFoundError:
            continue
        if other_than is not None and raw.seq == other_than:
            continue
        if generation_of(raw.headers, raw.data or b"") >= generation:
            return name
    return None


def generation_of(headers: Mapping[str, str] | None, data: bytes) -> int:
    """The ``taskgeneration`` a message claims (1 when it does not say or is unreadable)."""
    try:
        value = event_dict(headers, data).get("taskgeneration", 1)
    except ValueError:
        return 1
    if isinstance(value, str) and value.isdigit():  # binary mode: header values are text
        value = int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1


def carried(headers: Mapping[str, str] | None, data: bytes) -> dict[str, object]:
    """What a follow-up event of the message's task keeps (``Envelope.carry``): its
    extensions and generation; only the generation when the message does not parse."""
    try:
        return parse_event(event_bytes(headers, data)).carry()
    except ValueError:
        return {"taskgeneration": generation_of(headers, data)}


@dataclass(frozen=True)
class Advisory:
    """The fields we use of a JetStream max_deliver / terminated advisory."""

    kind: Kind
    stream: str
    consumer: str
    stream_seq: int
    deliveries: int
    reason: str = ""


def parse_advisory(raw: bytes) -> Advisory:
    """Raises ``ValueError`` for anything that is not one of the two advisories."""
    doc = json.loads(raw)
    kinds: dict[str, Kind] = {"io.nats.jetstream.advisory.v1.max_deliver": "max_deliveries",
                              "io.nats.jetstream.advisory.v1.terminated": "terminated"}
    if not isinstance(doc, dict) or doc.get("type") not in kinds:
        raise ValueError(f"not a max_deliver/terminated advisory: {str(doc)[:200]}")
    try:
        return Advisory(kind=kinds[doc["type"]], stream=str(doc["stream"]),
                        consumer=str(doc["consumer"]), stream_seq=int(doc["stream_seq"]),
                        deliveries=int(doc.get("deliveries") or 0),
                        reason=str(doc.get("reason") or ""))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"advisory lacks {exc}") from exc


def header_value(text: str) -> str:
    """One printable ASCII line: NATS headers cannot carry newlines."""
    flat = " ".join(str(text).split()).encode("ascii", "replace").decode()
    return flat[:MAX_HEADER_CHARS]


def task_of(subject: str, data: bytes | None) -> str | None:
    """``tasks.<event>.<id>`` and ``dispatch.<pool>.<id>`` name it; other messages
    (webhook jobs) carry it in JSON."""
    parts = subject.split(".")
    if parts[0] in ("tasks", "dispatch") and len(parts) == 3 and is_identifier(parts[2]):
        return parts[2]
    try:
        doc = json.loads(data or b"")
    except ValueError:
        return None
    if isinstance(doc, dict):
        for key in ("task_id", "subject"):
            value = doc.get(key)
            if isinstance(value, str) and is_identifier(value):
                return value
    return None


@dataclass(frozen=True)
class DeadLetter:
    subject: str
    data: bytes
    headers: dict[str, str]

    @property
    def msg_id(self) -> str:
        return self.headers[MSG_ID]


def build_dead_letter(adv: Advisory, original: RawStreamMsg | None, error: str) -> DeadLetter:
    """The DLQ copy of the message an advisory names; ``original`` may be gone already."""
    subject = original.subject if original is not None and original.subject else ""
    data = (original.data or b"") if original is not None else b""
    task = task_of(subject, data) if subject else None
    headers = {k: v for k, v in ((original.headers or {}) if original else {}).items()
               if not k.startswith(("Nats-", "Radtrain-Dlq-"))}
    orig_id = ((original.headers or {}).get(MSG_ID) if original else None) or ""
    headers |= {
        H_STREAM: adv.stream, H_SEQ: str(adv.stream_seq), H_SUBJECT: subject,
        H_CONSUMER: adv.consumer, H_DELIVERIES: str(adv.deliveries), H_REASON: adv.kind,
        H_ERROR: header_value(error or "no error recorded (ack timeouts: a worker died?)"),
        H_MSG_ID: orig_id, H_TASK: task or "",
        H_ORIGINAL_TIME: original.time.isoformat() if original and original.time else "",
        MSG_ID: f"dlq:{adv.stream}:{adv.stream_seq}:{adv.consumer}",
    }
    if original is None:
        headers[H_MISSING] = "true"
    headers = {k: v for k, v in headers.items() if v != ""}
    return DeadLetter(subject=f"dlq.{adv.consumer}.{task or 'unknown'}", data=data,
                      headers=headers)


@dataclass(frozen=True)
class StoredDeadLetter:
    """One message of the DLQ stream, as the CLI shows it."""

    seq: int
    time: datetime | None
    subject: str
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_raw(cls, raw: RawStreamMsg) -> StoredDeadLetter:
        return cls(seq=int(raw.seq or 0), time=raw.time, subject=raw.subject or "",
                   data=raw.data or b"", headers=dict(raw.headers or {}))

    def get(self, header: str) -> str:
        return self.headers.get(header, "")

    @property
    def consumer(self) -> str:
        return self.get(H_CONSUMER)

    @property
    def task_id(self) -> str:
        return self.get(H_TASK)

    def summary(self) -> dict[str, Any]:
        return {"seq": self.seq, "time": self.time.isoformat() if self.time else None,
                "consumer": self.consumer, "task_id": self.task_id or None,
                "original": f"{self.get(H_STREAM)}:{self.get(H_SEQ)}",
                "subject": self.get(H_SUBJECT), "reason": self.get(H_REASON),
                "deliveries": int(self.get(H_DELIVERIES) or 0), "error": self.get(H_ERROR)}

    def redrive_message(self) -> tuple[str, bytes, dict[str, str]]:
        """Subject, body and headers to publish the original again.

        A fresh ``Nats-Msg-Id`` (derived from this DLQ entry, so redriving twice
        within the duplicate window publishes once) and headers naming the copy.
        """
        keep = {k: v for k, v in self.headers.items()
                if not k.startswith(("Nats-", "Radtrain-Dlq-")) and k not in (REPLAY_OF,
                                                                             REDRIVE_OF)}
        origin = f"{self.get(H_STREAM)}:{self.get(H_SEQ)}"
        base_id = self.get(H_MSG_ID) or origin
        keep |= {REPLAY_OF: origin, REDRIVE_OF: f"{DLQ_STREAM}:{self.seq}",
                 MSG_ID: f"{base_id}:redrive:{self.seq}"}
        return self.get(H_SUBJECT), self.data, keep


def dlq_subject(consumer: str | None = None, task_id: str | None = None) -> str:
    return f"dlq.{consumer or '*'}.{task_id or '*'}"
