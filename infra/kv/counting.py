"""The counters of a listing (infra/kv/listing.py), each step counted once however often
it is retried.

A step of a listing writes several keys (a slot, the marker, counters) with no
transaction between them, so a writer killed half way (a stream leader killed, a
node frozen) is repaired by a retry that does the step again. A counter therefore
remembers the token of every change whose step is not yet recorded in the task's
marker: the retry's change finds its token and is not counted twice. Once the
marker records the step, the writer confirms the token and drops it with its next
change of that counter, or alone after :data:`DROP_AFTER_S`; so what a counter
remembers is the steps in flight, not a window of recent changes that a burst
outruns (a window of the last 64 counted a retry twice after a 1,000-task burst in
the cluster fault tests). A token whose writer died before confirming it goes after
:data:`TOKEN_TTL_S`, longer than a message's redeliveries take; :data:`UNCONFIRMED`
bounds the rest.

Tokens are kept as short digests with the minute they were counted in: a counter is
rewritten on every change.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from pydantic import BaseModel

from infra.kv.coalesce import Change, Coalescer

UNCONFIRMED = 1024
"""Tokens a counter remembers of steps not yet confirmed; the oldest go first."""
CONFIRMING_KEYS = 1024
"""Counters this writer holds confirmed tokens for (each dropped with its next change)."""
DROP_AFTER_S = 1.0
"""Confirmed tokens not dropped by a change of the counter meanwhile are dropped alone
then: a burst drops them with its own changes, a lone task costs one more write."""
TOKEN_TTL_S = 900.0
"""A token left by a writer that died before confirming it is dropped after this long
(a task index message's redeliveries take about five minutes)."""
_DIGEST = 12
log = logging.getLogger(__name__)


class Counter(BaseModel):
    n: int = 0
    recent: list[str] = []
    """Digests of the tokens of changes whose step may still be retried, each followed
    by ``@`` and the minute it was counted in (hexadecimal)."""


def digest(token: str) -> str:
    """A 12-character digest of a token (72 bits: no two steps in flight share one)."""
    return base64.urlsafe_b64encode(hashlib.blake2b(token.encode(), digest_size=9).digest()
                                    ).decode()


def _minute(now: float) -> int:
    return int(now // 60)


def _kept(recent: list[str], dropped: set[str], now: float) -> list[str]:
    """``recent`` without the dropped digests and those older than the TTL."""
    oldest = _minute(now - TOKEN_TTL_S)
    return [t for t in recent if t[:_DIGEST] not in dropped
            and int(t[_DIGEST + 1:] or "0", 16) >= oldest]


def _dropping(dropped: set[str], now: float) -> Change[Counter]:
    """The change that only forgets tokens (``None``: nothing to forget)."""
    def change(c: Counter | None) -> Counter | None:
        kept = _kept(c.recent, dropped, now) if c else []
        return None if c is None or len(kept) == len(c.recent) else Counter(n=c.n, recent=kept)
    return change


class StepCounters:
    """Changes of a listing's counters, queued per key behind one write
    (infra/kv/coalesce.py)."""

    def __init__(self, update: Callable[[str, Change[Counter]], Awaitable[None]],
                 clock: Callable[[], float] = time.time) -> None:
        self.coalescer: Coalescer[Counter] = Coalescer(update)
        self.clock = clock
        self._confirmed: OrderedDict[str, list[str]] = OrderedDict()
        self._drops: dict[str, asyncio.Task[None]] = {}

    async def raise_to(self, key: str, n: int) -> None:
        """``n`` at least (idempotent without a token)."""
        await self.coalescer.apply(key, lambda c: None if c and c.n >= n else Counter(
            n=n, recent=c.recent if c else []))

    async def bump(self, key: str, token: str, delta: int) -> bool:
        """Add ``delta`` unless the change of ``token`` is remembered: whether it counted.
        The tokens this writer confirmed for ``key`` are dropped in the same write."""
        mark, done = digest(token), set(self._confirmed.pop(key, []))
        counted, now = False, self.clock()
        dropping = _dropping(done, now)

        def change(c: Counter | None) -> Counter | None:
            nonlocal counted
            c = c or Counter()
            kept = _kept(c.recent, done, now)
            counted = mark not in {t[:_DIGEST] for t in kept}
            if not counted:
                return dropping(c)
            stamped = f"{mark}@{_minute(now):x}"
            return Counter(n=c.n + delta, recent=[*kept, stamped][-UNCONFIRMED:])

        try:
            await self.coalescer.apply(key, change)
        except BaseException:
            self._confirmed.setdefault(key, []).extend(done)  # dropped with a later change
            raise
        return counted

    async def take_back(self, key: str, token: str, delta: int, *, unless: str) -> bool:
        """Undo the change of ``token`` (``delta``) while it is remembered, unless the change
        of ``unless`` (its opposite) is remembered too; forget ``token`` either way.
        Whether it took it back. A step that recorded ``token``'s change has confirmed it
        (then it is not remembered, and stays counted)."""
        mark, opposite, undone = digest(token), digest(unless), False

        def change(c: Counter | None) -> Counter | None:
            nonlocal undone
            marks = {t[:_DIGEST] for t in c.recent} if c else set()
            undone = mark in marks and opposite not in marks
            if c is None or mark not in marks:
                return None
            kept = [t for t in c.recent if t[:_DIGEST] != mark]
            return Counter(n=c.n - delta if undone else c.n, recent=kept)

        await self.coalescer.apply(key, change)
        return undone

    def confirm(self, key: str, token: str) -> None:
        """The step of ``token`` is recorded: no retry will come, forget it (with this
        writer's next change of ``key``: no write of its own)."""
        marks = self._confirmed.setdefault(key, [])
        marks.append(digest(token))
        del marks[:-UNCONFIRMED]
        self._confirmed.move_to_end(key)
        while len(self._confirmed) > CONFIRMING_KEYS:
            self._confirmed.popitem(last=False)
        if key not in self._drops:
            self._drops[key] = asyncio.get_running_loop().create_task(self._drop_later(key))

    async def _drop_later(self, key: str) -> None:
        """The confirmed tokens of ``key`` that no change carried away meanwhile, dropped
        in a write of their own (a failure leaves them to the TTL)."""
        try:
            await asyncio.sleep(DROP_AFTER_S)
        finally:
            if self._drops.get(key) is asyncio.current_task():
                del self._drops[key]
        done, now = set(self._confirmed.pop(key, [])), self.clock()
        if not done:
            return
        try:
            await self.coalescer.apply(key, _dropping(done, now))
        except Exception as exc:  # the TTL drops them later
            log.warning("dropping the confirmed tokens of %s: %s", key, exc)
