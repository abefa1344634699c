"""Caps on what one client may hold open (issue 17; the README's "Limits" table).

* Server-Sent Event streams: each ``GET /v1/tasks/{id}/events`` holds an ordered
  consumer on NATS and a socket for as long as the task runs, so they are
  counted per API key and in total, per gateway process (429 and Retry-After
  beyond either cap, before any consumer is made).
* Unauthenticated traffic (no key, a malformed, unknown or revoked one, or one
  this gateway has not looked up yet) spends a token of its client address's
  bucket before the key is looked up in KV, so a flood of made-up keys cannot
  turn into a flood of KV reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web

from gateway.app_keys import API_KEY_ID
from gateway.errors import ApiError
from gateway.ratelimit import RateLimiter, retry_after_header


class StreamSlots:
    """Open long-lived streams (Server-Sent Events): at most ``per_key`` per API key and
    ``total`` in all, in this gateway process. Each open stream holds an ordered
    consumer on NATS and a socket; beyond the caps a client gets 429 and Retry-After."""

    RETRY_AFTER_S = 5.0

    def __init__(self, per_key: int, total: int) -> None:
        self.per_key, self.total = per_key, total
        self._open: dict[str, int] = {}
        self._count = 0

    @property
    def open(self) -> int:
        return self._count

    def acquire(self, key: str) -> str | None:
        """``None`` when a slot was taken (release it later), else which cap is full."""
        if self._count >= self.total:
            return "total"
        if self._open.get(key, 0) >= self.per_key:
            return "per_key"
        self._open[key] = self._open.get(key, 0) + 1
        self._count += 1
        return None

    def release(self, key: str) -> None:
        left = self._open.get(key, 0) - 1
        if left > 0:
            self._open[key] = left
        else:
            self._open.pop(key, None)
        self._count = max(0, self._count - 1)


STREAMS = web.AppKey("stream_slots", StreamSlots)


@contextmanager
def stream_slot(request: web.Request) -> Iterator[None]:
    """Hold one of the caller's stream slots for the body of the block, or answer 429."""
    slots = request.app[STREAMS]
    key = request.get(API_KEY_ID) or f"addr:{request.remote}"
    full = slots.acquire(key)
    if full is not None:
        which = (f"{slots.per_key} open event streams for this API key" if full == "per_key"
                 else "the gateway's limit of open event streams")
        raise ApiError(429, "too_many_streams", f"{which} reached; close one or retry later",
                       headers={"Retry-After": retry_after_header(slots.RETRY_AFTER_S)})
    try:
        yield
    finally:
        slots.release(key)


ADDRESSES = web.AppKey("address_limiter", RateLimiter)


def client_address(request: web.Request) -> str:
    """The peer's address (a proxy in front should keep one gateway per client network)."""
    return request.remote or "unknown"


def refund_unauthenticated(request: web.Request) -> None:
    """The key turned out valid: its address gets the token back, so legitimate traffic
    (keys not cached yet, or ``api_key_cache_s`` 0) never drains the bucket."""
    limiter = request.app.get(ADDRESSES)
    if limiter is not None:
        limiter.refund(client_address(request))


def limit_unauthenticated(request: web.Request) -> None:
    """Spend a token of the client address's bucket, or answer 429 (before any KV read)."""
    limiter = request.app.get(ADDRESSES)
    if limiter is None:  # an app assembled without limits.install (unit tests)
        return
    wait = limiter.take(client_address(request))
    if wait > 0:
        raise ApiError(429, "rate_limited", "too many unauthenticated requests from this "
                       f"address; retry in {wait:.1f}s",
                       headers={"Retry-After": retry_after_header(wait)})


def install(app: web.Application, *, sse_per_key: int, sse_total: int, unauth_rate_per_s: float,
            unauth_burst: int) -> None:
    app[STREAMS] = StreamSlots(sse_per_key, sse_total)
    app[ADDRESSES] = RateLimiter(unauth_rate_per_s, unauth_burst)
