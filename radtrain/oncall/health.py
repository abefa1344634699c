"""Stream and consumer health for on-call (``radtrain status``).

``collect`` reads what the server knows (stream sizes, each durable consumer's
pending, ack-pending and redelivered counts, the oldest message it has not
acknowledged) and ``assess`` turns it into the few lines a person acts on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo
from nats.js.errors import NotFoundError

from infra.bus.stream_read import next_msg
from infra.bus.topology import (
    ADVISORIES_STREAM,
    DISPATCH_STREAM,
    DLQ_STREAM,
    TASKS_STREAM,
    WEBHOOKS_STREAM,
)

STREAMS = (TASKS_STREAM, DISPATCH_STREAM, WEBHOOKS_STREAM, DLQ_STREAM, ADVISORIES_STREAM)
OLD_UNACKED_S = 15 * 60.0


@dataclass(frozen=True)
class ConsumerHealth:
    stream: str
    name: str
    pending: int
    """Not yet delivered."""
    ack_pending: int
    """Delivered, not yet acknowledged."""
    redelivered: int
    waiting: int
    """Pull requests waiting: 0 with pending work means no worker is pulling."""
    max_deliver: int
    oldest_unacked_seq: int | None = None
    oldest_unacked_age_s: float | None = None


@dataclass(frozen=True)
class StreamHealth:
    name: str
    messages: int
    bytes: int
    first_seq: int
    last_seq: int


@dataclass
class Health:
    streams: list[StreamHealth] = field(default_factory=list)
    consumers: list[ConsumerHealth] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def dlq_size(self) -> int:
        return next((s.messages for s in self.streams if s.name == DLQ_STREAM), 0)

    def as_dict(self) -> dict[str, Any]:
        return {"streams": [asdict(s) for s in self.streams],
                "consumers": [asdict(c) for c in self.consumers],
                "dlq_size": self.dlq_size, "missing": self.missing,
                "problems": assess(self)}


def assess(health: Health, old_s: float = OLD_UNACKED_S) -> list[str]:
    """What needs a person, most urgent first; empty when all is well."""
    problems = [f"stream {name} missing: run `radtrain infra apply`" for name in health.missing]
    if health.dlq_size:
        problems.append(f"{health.dlq_size} dead letter(s) in {DLQ_STREAM}: `radtrain dlq list`")
    for c in health.consumers:
        if c.oldest_unacked_age_s is not None and c.oldest_unacked_age_s > old_s:
            problems.append(f"{c.name}: oldest unacked message (#{c.oldest_unacked_seq}) is "
                            f"{c.oldest_unacked_age_s / 60:.0f} min old")
        if c.pending and c.waiting == 0 and c.ack_pending == 0:
            problems.append(f"{c.name}: {c.pending} message(s) waiting and no pull request "
                            "(is a worker running?)")
        if c.redelivered:
            problems.append(f"{c.name}: {c.redelivered} message(s) being redelivered")
    return problems


def _filters(info: ConsumerInfo) -> list[str]:
    cfg = info.config
    return list(cfg.filter_subjects or []) or [cfg.filter_subject or ">"]


async def _oldest_unacked(js: JetStreamContext, info: ConsumerInfo, now: datetime
                          ) -> tuple[int | None, float | None]:
    """The first message after the ack floor that the filter selects: what holds it back."""
    if not (info.num_pending or info.num_ack_pending):
        return None, None
    floor = info.ack_floor.stream_seq if info.ack_floor else 0
    found = [m for m in [await next_msg(js, info.stream_name, floor + 1, f)
                         for f in _filters(info)] if m is not None and m.seq is not None]
    if not found:
        return None, None
    oldest = min(found, key=lambda m: m.seq or 0)
    age = (now - oldest.time).total_seconds() if oldest.time else None
    return oldest.seq, age


async def _consumer(js: JetStreamContext, info: ConsumerInfo, now: datetime) -> ConsumerHealth:
    seq, age = await _oldest_unacked(js, info, now)
    return ConsumerHealth(
        stream=info.stream_name, name=info.name, pending=int(info.num_pending or 0),
        ack_pending=int(info.num_ack_pending or 0), redelivered=int(info.num_redelivered or 0),
        waiting=int(info.num_waiting or 0), max_deliver=int(info.config.max_deliver or -1),
        oldest_unacked_seq=seq, oldest_unacked_age_s=age)


async def collect(js: JetStreamContext, now: datetime | None = None) -> Health:
    now = now or datetime.now(UTC)
    health = Health()
    for name in STREAMS:
        try:
            info = await js.stream_info(name)
        except NotFoundError:
            health.missing.append(name)
            continue
        st = info.state
        health.streams.append(StreamHealth(name, int(st.messages), int(st.bytes),
                                           int(st.first_seq), int(st.last_seq)))
        for cinfo in sorted(await js.consumers_info(name), key=lambda c: c.name):
            health.consumers.append(await _consumer(js, cinfo, now))
    return health
