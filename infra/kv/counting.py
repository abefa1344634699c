"""The counters of a listing (infra/kv/listing.py), each step counted once however often
it is retried.

A step of a listing writes several keys (a slot, the marker, counters) with no
transaction between them, so a writer killed half way (a stream leader killed, a
node frozen) is repaired by a retry that does the step again. A counter therefore
remembers the token of every change whose step is not yet recorded in the task's
marker: the retry's change finds its token and is not counted twice. Once the
marker records the step, the writer confirms the token and its next change of that
counter drops it, so what a counter remembers is the steps in flight (bounded by
:data:`UNCONFIRMED`), not a window of recent changes that a burst outruns: a window
of the last 64 counted a retry twice after a 1,000-task burst in the cluster fault
tests.

Tokens are kept as short digests: a counter is rewritten on every change.
"""

from __future__ import annotations

import base64
import hashlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from pydantic import BaseModel

from infra.kv.coalesce import Change, Coalescer

UNCONFIRMED = 1024
"""Tokens a counter remembers of steps not yet confirmed; the oldest go first."""
CONFIRMING_KEYS = 1024
"""Counters this writer holds confirmed tokens for (each dropped with its next change)."""


class Counter(BaseModel):
    n: int = 0
    recent: list[str] = []
    """Digests of the tokens of changes whose step may still be retried."""


def digest(token: str) -> str:
    """A 12-character digest of a token (72 bits: no two steps in flight share one)."""
    return base64.urlsafe_b64encode(hashlib.blake2b(token.encode(), digest_size=9).digest()
                                    ).decode()


class StepCounters:
    """Changes of a listing's counters, queued per key behind one write
    (infra/kv/coalesce.py)."""

    def __init__(self, update: Callable[[str, Change[Counter]], Awaitable[None]]) -> None:
        self.coalescer: Coalescer[Counter] = Coalescer(update)
        self._confirmed: OrderedDict[str, list[str]] = OrderedDict()

    async def raise_to(self, key: str, n: int) -> None:
        """``n`` at least (idempotent without a token)."""
        await self.coalescer.apply(key, lambda c: None if c and c.n >= n else Counter(
            n=n, recent=c.recent if c else []))

    async def bump(self, key: str, token: str, delta: int) -> bool:
        """Add ``delta`` unless the change of ``token`` is remembered: whether it counted.
        The tokens this writer confirmed for ``key`` are dropped in the same write."""
        mark, done = digest(token), set(self._confirmed.pop(key, []))
        counted = False

        def change(c: Counter | None) -> Counter | None:
            nonlocal counted
            c = c or Counter()
            kept = [t for t in c.recent if t not in done]
            counted = mark not in kept
            if not counted:
                return None if len(kept) == len(c.recent) else Counter(n=c.n, recent=kept)
            return Counter(n=c.n + delta, recent=[*kept, mark][-UNCONFIRMED:])

        try:
            await self.coalescer.apply(key, change)
        except BaseException:
            self._confirmed.setdefault(key, []).extend(done)  # dropped with a later change
            raise
        return counted

    def confirm(self, key: str, token: str) -> None:
        """The step of ``token`` is recorded: no retry will come, forget it (with this
        writer's next change of ``key``: no write of its own)."""
        marks = self._confirmed.setdefault(key, [])
        marks.append(digest(token))
        del marks[:-UNCONFIRMED]
        self._confirmed.move_to_end(key)
        while len(self._confirmed) > CONFIRMING_KEYS:
            self._confirmed.popitem(last=False)
