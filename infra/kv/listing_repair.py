"""Positions a writer of the lists (infra/kv/listing.py) could not give up, given up later.

A writer that loses the race to record a step gives up the positions it took for
it. When reading the winner or giving a position up fails (a stream leader killed, a
node frozen), the message goes back for a redelivery; but the redelivery finds the
task listed by the winner and stops, so the loser's position stayed: the task listed
twice and counted twice, for good. The same for a step that fails after taking its
positions while another writer records its own. The writer therefore keeps what it
owes here and settles it in the background once the bucket answers again
(``ListingWrites._settle``: adopted by a retry meanwhile, or given up).

Not covered: a writer process killed (``kill -9``) with positions owed, or between
taking a position and recording it while another writer records its own for the same
step: what it owed goes with it. And a position settled after its step's counter
token expired (``TOKEN_TTL_S``, as long as :data:`OWED_TTL_S`) leaves its state's
count one too high.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import NamedTuple

from infra.bus.topology import KV_LISTINGS
from infra.errors import KVConflict
from infra.kv.listing_marker import Marker
from infra.kv.repository import KVRepository
from infra.telemetry.metrics import LISTING_LEFT, LISTING_OWED

log = logging.getLogger(__name__)

MAX_OWED = 4096
"""Positions a process keeps to give up; past it the oldest are dropped (logged)."""
OWED_TTL_S = 900.0
"""How long a position is kept while it cannot be given up (the bucket unreachable, or
its marker still naming the list as being entered): then dropped (logged)."""
WINNER_WAITS_S = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8)
"""Pauses while the write that beat ours is still in flight (then the step is retried)."""
ROUND_PAUSES_S = (0.05, 0.2, 0.5, 1.0, 2.0, 5.0)
"""Pauses before each round of attempts; the last one repeats."""


class Owed(NamedTuple):
    """A position ``p`` of list ``lst`` (of ``state``; ``all``: the list of all) that holds
    ``item_id`` and that no marker may record. ``touched``: giving it up had begun (its
    slot may be emptied, its change counted) when it failed."""
    lst: str
    item_id: str
    state: str
    p: int
    touched: bool = False


class Repairs:
    """What this process owes the lists, settled in one background task.

    ``settle(owed)``: ``True`` once the position needs nothing more (given up, or
    recorded after all), ``False`` while a writer may still adopt it; an exception
    (the bucket still away) ends the round."""

    def __init__(self, settle: Callable[[Owed], Awaitable[bool]],
                 clock: Callable[[], float] = time.monotonic, limit: int = MAX_OWED) -> None:
        self.settle = settle
        self.clock = clock
        self.limit = limit
        self.owed: OrderedDict[tuple[str, int], tuple[Owed, float]] = OrderedDict()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._hurry = False

    def owe(self, positions: Iterable[Owed]) -> None:
        now = self.clock()
        for owed in positions:
            key = (owed.lst, owed.p)
            if key in self.owed:  # owed again (a retry here failed too): its first age
                first, since = self.owed[key]
                self.owed[key] = (owed._replace(touched=owed.touched or first.touched), since)
                continue
            self.owed[key] = (owed, now)
            LISTING_OWED.inc()
            if len(self.owed) > self.limit:
                oldest = next(iter(self.owed))
                log.error("listing: more than %d positions to give up; %s left listed",
                          self.limit, self.owed[oldest][0])
                self._forget(oldest, "limit")
        if self.owed and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._run())

    def touch(self, owed: Owed, touched: bool = True) -> None:
        """Giving ``owed`` up begins: a failure from here may leave its slot emptied (by
        this writer, so still to be counted out); ``touched=False``: put back."""
        key = (owed.lst, owed.p)
        if key in self.owed:
            first, since = self.owed[key]
            self.owed[key] = (first._replace(touched=touched), since)

    async def settled(self) -> None:
        """Once nothing is owed: a round at once, then rounds at the shortest pause (a
        shutdown waits for this with a timeout, then :meth:`close`)."""
        self._hurry = True
        self._wake.set()
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    def close(self) -> None:
        """Stop trying (what is still owed is logged)."""
        if self.owed:
            log.error("listing: %d positions not given up at shutdown, left listed: %s",
                      len(self.owed), [owed for owed, _ in self.owed.values()][:10])
            for key in list(self.owed):
                self._forget(key, "shutdown")
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        rounds = 0
        while self.owed:
            pause = ROUND_PAUSES_S[0 if self._hurry else min(rounds, len(ROUND_PAUSES_S) - 1)]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), pause)
            self._wake.clear()
            rounds += 1
            await self.round()

    async def round(self) -> None:
        """One attempt at each owed position, oldest first, after dropping the expired."""
        now = self.clock()
        for key, (owed, since) in list(self.owed.items()):
            if now - since > OWED_TTL_S:
                self._forget(key, "ttl")
                log.error("listing: could not give up %s for %.0f s; left listed",
                          owed, OWED_TTL_S)
        for key, (owed, _) in list(self.owed.items()):
            try:
                done = await self.settle(owed)
            except Exception as exc:  # the bucket still away: all of them next round
                log.warning("listing: %d positions still to give up: %s", len(self.owed), exc)
                return
            if done and key in self.owed:
                self._forget(key, None)

    def _forget(self, key: tuple[str, int], left: str | None) -> None:
        """No longer owed: settled (``left`` None) or given up on, for that reason."""
        del self.owed[key]
        LISTING_OWED.dec()
        if left is not None:
            LISTING_LEFT.labels(left).inc()


async def winner_of(winners: KVRepository[Marker], key: str,
                    lost_at: int) -> tuple[Marker, int] | None:
    """The marker whose write beat ours (based on revision ``lost_at``; 0: a create),
    with its revision.

    A clustered stream refuses a compare-and-set while another write of the same key
    is in flight, proposed but not yet applied (nats-server#6194): for a moment even
    the stream leader still shows ``lost_at``. Deciding on that view gave up a
    position the winner was about to name (a task missing from its state list in
    the cluster fault tests), so wait until the winner shows; a winner that never
    lands fails the step, which is retried whole."""
    for pause in (*WINNER_WAITS_S, None):
        found = await winners.get_entry(key)
        if (found[1] if found else 0) != lost_at:
            return found
        if pause is None:
            break
        await asyncio.sleep(pause)
    raise KVConflict(KV_LISTINGS, key, len(WINNER_WAITS_S))
