"""Concurrent changes of one KV key folded into one compare-and-set.

A tenant's list counters (infra/kv/listing.py) are one key that every task of
the tenant moves: in a burst, dozens of handler lanes raise the same counter at
once. One compare-and-set each means all but one lose, read and try again, so a
burst of ``n`` costs about ``n²/2`` round trips. Here the first caller writes
for everyone who arrived before its write: their changes are applied in arrival
order to one value, so the burst costs one write per round trip, not one per
caller. Each caller returns once a write that includes its change has landed,
and a failed write fails every caller in it (each one's message is retried).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
Change = Callable[[T | None], T | None]
"""A change of a value (``None``: absent); returns ``None`` when nothing is to be written."""


def compose(changes: list[Change[T]]) -> Change[T]:
    """The changes one after the other; ``None`` when none of them writes anything."""
    def change(value: T | None) -> T | None:
        current, changed = value, False
        for one in changes:
            new = one(current)
            if new is not None:
                current, changed = new, True
        return current if changed else None
    return change


Turn = asyncio.Future[str | None]
"""A queued caller's wait: ``None`` once a write carried its change, ``_LEAD`` when it is
to write for the queue, or the exception of the write that carried it."""
_LEAD = "lead"
"""What a queued caller is woken with when the queue is its to write."""


class Coalescer(Generic[T]):
    """Per key: one writer at a time, carrying every change that queued meanwhile; then
    the first caller still queued writes for the queue (no caller writes for others for
    longer than its own turn)."""

    def __init__(self, write: Callable[[str, Change[T]], Awaitable[None]]) -> None:
        self._write = write
        self._queued: dict[str, list[tuple[Change[T], Turn | None]]] = {}

    async def apply(self, key: str, change: Change[T]) -> None:
        """Returns once ``change`` is written (or needed no write); raises what the write
        that carried it raised."""
        queue = self._queued.get(key)
        if queue is not None:  # a write of this key is under way: queue behind it
            turn: Turn = asyncio.get_running_loop().create_future()
            queue.append((change, turn))
            try:
                if await turn != _LEAD:
                    return  # carried by another caller's write
            except asyncio.CancelledError:  # woken to write, but cancelled first: pass it on
                if turn.done() and not turn.cancelled() and turn.exception() is None:
                    self._hand_off(key)
                raise
        else:
            self._queued[key] = [(change, None)]
        batch, self._queued[key] = self._queued[key], []
        try:
            await self._carry(key, batch)
        finally:
            self._hand_off(key)

    async def _carry(self, key: str,
                     batch: list[tuple[Change[T], Turn | None]]) -> None:
        try:
            await self._write(key, compose([c for c, _ in batch]))
        except BaseException as exc:  # every caller whose change was in it fails alike
            gone = exc if isinstance(exc, Exception) else WriterGone(
                f"the write of {key} was cancelled")
            for _, fut in batch:
                if fut is not None and not fut.done():
                    fut.set_exception(gone)
                    fut.exception()  # retrieved: no warning if its caller has gone
            raise
        for _, fut in batch:
            if fut is not None and not fut.done():
                fut.set_result(None)

    def _hand_off(self, key: str) -> None:
        """The first caller queued (and still waiting) writes next; none: the key is free."""
        waiting = [(c, f) for c, f in self._queued[key] if f is not None and not f.done()]
        if not waiting:
            del self._queued[key]
            return
        self._queued[key] = list(waiting)
        waiting[0][1].set_result(_LEAD)


class WriterGone(ConnectionError):
    """The caller whose write carried this change was cancelled (its process stops)."""
