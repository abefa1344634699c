"""Reading stored messages by sequence, for the on-call tools (DLQ, replay, status).

Direct "get next message at or after seq matching subject" requests: no
consumer is created, nothing is acknowledged, and a stream that is being
written meanwhile is read consistently up to where the scan stops.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime

from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError


async def next_msg(js: JetStreamContext, stream: str, seq: int,
                   subject: str = ">") -> RawStreamMsg | None:
    """The first message with sequence >= ``seq`` whose subject matches, or ``None``."""
    try:
        return await js.get_msg(stream, seq=max(seq, 1), subject=subject, next=True)
    except NotFoundError:
        return None


async def get_seq(js: JetStreamContext, stream: str, seq: int) -> RawStreamMsg | None:
    try:
        return await js.get_msg(stream, seq=seq)
    except NotFoundError:
        return None


async def scan(js: JetStreamContext, stream: str, *, subject: str = ">", start: int = 1,
               stop: int | None = None, limit: int | None = None
               ) -> AsyncIterator[RawStreamMsg]:
    """Messages from ``start`` to ``stop`` (inclusive), at most ``limit`` of them."""
    seq, count = start, 0
    while limit is None or count < limit:
        msg = await next_msg(js, stream, seq, subject)
        if msg is None or msg.seq is None or (stop is not None and msg.seq > stop):
            return
        yield msg
        count += 1
        seq = msg.seq + 1


async def first_seq_since(js: JetStreamContext, stream: str, since: datetime) -> int | None:
    """Binary search on the stream's (monotonic) store times: O(log n) requests."""
    info = await js.stream_info(stream)
    lo, hi = int(info.state.first_seq or 1), int(info.state.last_seq or 0)
    found: int | None = None
    while lo <= hi:
        mid = (lo + hi) // 2
        msg = await next_msg(js, stream, mid)
        if msg is None or msg.seq is None or msg.time is None:
            hi = mid - 1
            continue
        if msg.time >= since:
            found = msg.seq if found is None else min(found, msg.seq)
            hi = mid - 1
        else:
            lo = msg.seq + 1
    return found
