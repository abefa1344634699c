"""Small in-memory stand-ins for a JetStream message and context, for unit tests.

``FakeMsg`` records how it was settled (ack, nak with its delay, term with its
reason, in_progress); ``FakeJetStream`` records what was published, drops a
duplicate ``Nats-Msg-Id`` like the server's duplicate window, answers
``get_last_msg`` from what it holds, and can be told to fail. Both write to one
``timeline`` so a test can check the order (published before acked).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from schemas.events import Envelope, encode_event, parse_event


@dataclass
class Published:
    subject: str
    data: bytes
    headers: dict[str, str]
    seq: int

    @property
    def msg_id(self) -> str | None:
        return self.headers.get("Nats-Msg-Id")

    def event(self) -> Any:
        return parse_event(self.data)


class _TermClient:
    """What ``infra.bus.consumer.term`` publishes ``+TERM <reason>`` through."""

    def __init__(self, msg: FakeMsg) -> None:
        self._msg = msg

    async def publish(self, subject: str, payload: bytes = b"", **_: Any) -> None:
        assert subject == self._msg.reply
        text = payload.decode()
        assert text.startswith("+TERM")
        self._msg.settle("term", text.removeprefix("+TERM").strip())


class FakeMsg:
    """A JetStream delivery: subject, bytes, delivery count, stream sequence."""

    def __init__(self, subject: str, data: bytes, *, attempt: int = 1, seq: int = 1,
                 timeline: list[str] | None = None) -> None:
        self.subject, self.data = subject, data
        self.reply = f"$JS.ACK.TEST.c.{attempt}.{seq}.{seq}.0.0"
        self.headers: dict[str, str] | None = None
        self.metadata = SimpleNamespace(
            num_delivered=attempt, num_pending=0,
            sequence=SimpleNamespace(stream=seq, consumer=seq))
        self._client = _TermClient(self)
        self._ackd = False
        self.settled: list[tuple[str, Any]] = []
        self.heartbeats = 0
        self.timeline = timeline if timeline is not None else []

    def settle(self, kind: str, detail: Any = None) -> None:
        assert not self.settled, f"settled twice: {self.settled} then {kind}"
        self.settled.append((kind, detail))
        self.timeline.append(kind)

    @property
    def outcome(self) -> tuple[str, Any] | None:
        return self.settled[0] if self.settled else None

    async def ack(self) -> None:
        self.settle("ack")

    async def nak(self, delay: float | None = None) -> None:
        self.settle("nak", delay)

    async def term(self) -> None:
        self.settle("term", None)

    async def in_progress(self) -> None:
        self.heartbeats += 1

    def as_msg(self) -> Msg:
        return cast(Msg, self)


@dataclass
class FakeJetStream:
    """``publish`` and ``get_last_msg`` over a list; ``fail_publish`` makes publishing fail."""

    timeline: list[str] = field(default_factory=list)
    published: list[Published] = field(default_factory=list)
    fail_publish: bool = False
    _seq: int = 1000

    async def publish(self, subject: str, payload: bytes = b"",
                      headers: dict[str, str] | None = None, **_: Any) -> SimpleNamespace:
        if self.fail_publish:
            raise nats.errors.TimeoutError
        headers = dict(headers or {})
        msg_id = headers.get("Nats-Msg-Id")
        for old in self.published:
            if msg_id is not None and old.msg_id == msg_id:
                return SimpleNamespace(stream="TASKS", seq=old.seq, duplicate=True)
        self._seq += 1
        self.published.append(Published(subject, payload, headers, self._seq))
        self.timeline.append(f"publish {subject}")
        return SimpleNamespace(stream="TASKS", seq=self._seq, duplicate=False)

    def holds(self, event: Envelope) -> None:
        """Put an event in the stream without recording it on the timeline."""
        self._seq += 1
        self.published.append(Published(event.nats_subject, encode_event(event),
                                         {"Nats-Msg-Id": event.msg_id}, self._seq))

    async def get_last_msg(self, stream_name: str, subject: str) -> RawStreamMsg:
        del stream_name
        for old in reversed(self.published):
            if old.subject == subject:
                return RawStreamMsg(subject=old.subject, seq=old.seq, data=old.data,
                                    headers=old.headers, time=datetime.now(UTC))
        raise NotFoundError

    def on(self, prefix: str) -> list[Published]:
        return [p for p in self.published if p.subject.startswith(prefix)]

    def as_js(self) -> JetStreamContext:
        return cast(JetStreamContext, self)
