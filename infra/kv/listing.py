"""Listings whose cost does not grow with history: numbered per-tenant indexes in KV ``listings``.

``kv.keys()`` or a watch over ``<tenant>.*`` walks every key of the tenant, so a
listing built on it grows with the tenant's history. Here each list is a dense
array of numbered keys plus a counter, and a page is one batched direct get of
the counters, one of ``limit`` (and a few spare) positions, and one of the
records (infra/kv/direct.py): O(limit) whatever the history.

Keys (every one is one NATS subject; tenants and ids are single tokens):

===============================  ====================================================
``<kind>.<tenant>.all.n``        :class:`Counter`: how many positions are taken
``<kind>.<tenant>.all.<p>``      :class:`Slot`: the id at position ``p`` (1, 2, ...)
``<kind>.<tenant>.all.gone``     given up after a race; total = n - gone
``<kind>.<tenant>.s.<st>.n``     positions taken in the list of state ``st``
``<kind>.<tenant>.s.<st>.<p>``   the id at ``p``; ``""`` once the task has left ``st``
``<kind>.<tenant>.s.<st>.live``  :class:`Counter`: how many are in ``st`` now
``m<kind>.<id>``                 :class:`Marker`: where the id is listed, which state
===============================  ====================================================

A position is taken by ``kv.create`` on the next free key (atomic: two writers
never share one; there are no gaps), then the counter moves up by
compare-and-set. Newest first is highest position first; a cursor is the
position to continue below, so tasks added meanwhile never shift a page. The
writers of one process reserve positions in memory (:class:`NextPositions`) and
queue their changes of one counter behind one write (infra/kv/coalesce.py): a
burst of one tenant's tasks costs no lost creates and few counter writes.

Writers converge an id's entries to its current state (:meth:`ListingIndex.converge`):
every step is idempotent, so a writer killed half way is repaired by the
redelivery. Live counters remember the last :data:`RECENT` changes they counted,
so a retried step is not counted twice.

Each step is a KV round trip, so a writer remembers the entries it last read or
wrote (:class:`Known`) and starts each compare-and-set from that guess instead of
a read: a guess that is no longer current fails its write, and the writer reads
and decides again (as the projector's record cache does). A task's listing then
costs about half the round trips.

A state list keeps the positions of tasks that have left (``""``): a reader skips
them and, on a first page, stops once it has seen as many live entries as the
live counter says (below a cursor, at the bottom or at ``limit``). Its order is
newest into the state first.
Terminal states are never left (except by an on-call redrive), so their lists
stay dense; a transient state (requested, ready, running) costs the entries that
passed through it since its oldest live task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TypeVar

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from pydantic import BaseModel

from infra.bus.topology import KV_LISTINGS
from infra.errors import KVConflict
from infra.kv.coalesce import Coalescer
from infra.kv.direct import DirectReader
from infra.kv.known import Known, NextPositions
from infra.kv.pages import Cursor, ListPage
from infra.kv.repository import KVRepository, leader_reads

RECENT = 64
"""Changes a live counter remembers, to count a retried step once."""
LOOKBACK = 64
"""Positions searched below the counter for an entry a killed writer already took."""
MAX_CHUNK = 1024
"""Most positions read in one batch while skipping entries that left a state."""
WINNER_WAITS_S = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8)
"""Pauses while the write that beat ours is still in flight (then the step is retried)."""
TASKS = "t"
DATASETS = "d"
"""The kinds of lists: each has its own keys in the bucket."""
M = TypeVar("M", bound=BaseModel)


class Slot(BaseModel):
    id: str


class Counter(BaseModel):
    n: int = 0
    recent: list[str] = []


class Marker(BaseModel):
    tenant: str
    all: int = 0
    """Position in the tenant's list of all (0: being taken)."""
    state: str | None = None
    sp: int = 0
    """Position in the list of ``state`` (0: not listed in a state yet)."""
    order: tuple[int, int] = (0, 0)
    """(generation, state rank) of ``state``: an older state never replaces a newer one."""
    pending: str | None = None
    """The state being entered: a retry looks for the position already taken."""
    pending_order: tuple[int, int] = (0, 0)


class ListingIndex:
    """The numbered lists of one kind of object (``t`` tasks, ``d`` datasets)."""

    def __init__(self, kv: KVRepository[Slot], counters: KVRepository[Counter],
                 markers: KVRepository[Marker], kind: str,
                 direct: DirectReader | None = None,
                 winners: KVRepository[Marker] | None = None,
                 owners: KVRepository[Slot] | None = None) -> None:
        self.slots, self.counters, self.markers, self.kind = kv, counters, markers, kind
        self.direct = direct
        self.winners = winners or markers
        self.owners = owners or kv
        """Markers read through the stream leader: what a writer that lost a race learns
        there is never older than the winner's write (a replica's answer may be, and a
        position two writers share would be given up under the winner). ``owners``:
        slots read there too, before a position is adopted as one's own (a replica may
        still show an id in a position given up since)."""
        self.known = Known()
        self.counting: Coalescer[Counter] = Coalescer(
            lambda key, change: self._update(self.counters, key, change))
        self.positions = NextPositions()

    @classmethod
    async def open(cls, js: JetStreamContext, kind: str) -> ListingIndex:
        raw = await js.key_value(KV_LISTINGS)
        nc = getattr(js, "_nc", None)  # nats-py keeps its connection there
        leader = leader_reads(raw)
        return cls(KVRepository(raw, Slot, KV_LISTINGS), KVRepository(raw, Counter, KV_LISTINGS),
                   KVRepository(raw, Marker, KV_LISTINGS), kind,
                   DirectReader(nc) if isinstance(nc, NATS) else None,
                   KVRepository(leader, Marker, KV_LISTINGS),
                   KVRepository(leader, Slot, KV_LISTINGS))

    # --- keys -------------------------------------------------------------------------

    def _list(self, tenant: str, state: str | None) -> str:
        return f"{self.kind}.{tenant}.all" if state is None else f"{self.kind}.{tenant}.s.{state}"

    def _marker(self, item_id: str) -> str:
        return f"m{self.kind}.{item_id}"

    # --- writing ----------------------------------------------------------------------

    async def _entry(self, repo: KVRepository[M], key: str) -> tuple[M | None, int, bool]:
        """(value, revision, guessed): the known entry, else read (and then known)."""
        known = self.known.get(key)
        if known is not None:
            return known[0], known[1], True
        found = await repo.get_entry(key)
        if found is None:
            return None, 0, False
        self.known.put(key, *found)
        return found[0], found[1], False

    async def _write(self, repo: KVRepository[M], key: str, value: M,
                     revision: int) -> int | None:
        """Compare-and-set; the written entry is known, a lost race forgets the key."""
        written = await repo.compare_and_set(key, value, revision)
        if written is None:
            self.known.drop(key)
        else:
            self.known.put(key, value, written)
        return written

    async def _update(self, repo: KVRepository[M], key: str,
                      change: Callable[[M | None], M | None], attempts: int = 50) -> None:
        """``repo.update`` from the known entry: a guess that fails its write, or says
        there is nothing to write, is read again."""
        for _ in range(attempts):
            value, revision, guessed = await self._entry(repo, key)
            new = change(value)
            if new is None:
                if guessed:
                    self.known.drop(key)
                    continue
                return
            if await self._write(repo, key, new, revision) is not None:
                return
        raise KVConflict(KV_LISTINGS, key, attempts)

    async def _count(self, key: str, fresh: bool = False) -> int:
        if fresh:
            self.known.drop(key)
        found, _, _ = await self._entry(self.counters, key)
        return found.n if found else 0

    async def _raise_to(self, key: str, n: int) -> None:
        await self.counting.apply(key, lambda c: None if c and c.n >= n else Counter(
            n=n, recent=c.recent if c else []))

    async def _allocate(self, lst: str, item_id: str, lookback: bool) -> int:
        """The position of ``item_id`` in ``lst``: taken now, or found where a killed
        writer already took it (``lookback``). Starts above the known count; another
        writer's positions since then send it to the count read afresh."""
        top = await self._count(f"{lst}.n", fresh=lookback)
        if lookback:  # what decides to adopt a position is read from the stream leader
            keys = [f"{lst}.{p}" for p in range(top, max(0, top - LOOKBACK), -1)]
            found = await asyncio.gather(*(self.owners.get(k) for k in keys))
            for p, slot in zip(range(top, 0, -1), found, strict=False):
                if slot is not None and slot.id == item_id:
                    return p
        p, fresh = self.positions.reserve(lst, top + 1), lookback
        while (revision := await self._take(lst, p, item_id)) is None:
            if not fresh:
                fresh = True
                count = await self._count(f"{lst}.n", fresh=True)
                p = self.positions.reserve(lst, max(p, count) + 1)
                continue
            taken = await self.owners.get(f"{lst}.{p}")
            if taken is not None and taken.id == item_id:
                break
            p = self.positions.reserve(lst, p + 1)
        if revision is not None:
            self.known.put(f"{lst}.{p}", Slot(id=item_id), revision)
        await self._raise_to(f"{lst}.n", p)
        return p

    async def _take(self, lst: str, p: int, item_id: str) -> int | None:
        try:
            return await self.slots.create(f"{lst}.{p}", Slot(id=item_id))
        except BaseException:
            self.positions.release(lst, p)
            raise

    async def _bump(self, key: str, token: str, delta: int) -> None:
        def change(c: Counter | None) -> Counter | None:
            c = c or Counter()
            if token in c.recent:
                return None
            return Counter(n=c.n + delta, recent=[*c.recent, token][-RECENT:])

        await self.counting.apply(key, change)

    async def add(self, tenant: str, item_id: str) -> Marker:
        """List ``item_id`` under ``tenant`` once (idempotent): its marker."""
        key = self._marker(item_id)
        for _ in range(10):
            found, created = self.known.get(key), False
            if found is None:  # most likely a new id: its marker first, so a retry looks back
                revision = await self.markers.create(key, Marker(tenant=tenant))
                found, created = ((Marker(tenant=tenant), revision), True) if revision else (
                    await self._winner(key, 0), False)
                if found is None:
                    continue
                self.known.put(key, *found)
            marker, revision = found
            if marker.all:  # a position in the list of all is never given up: a guess will do
                return marker
            lst = self._list(tenant, None)
            p = await self._allocate(lst, item_id, lookback=not created)
            listed = marker.model_copy(update={"all": p})
            if await self._write(self.markers, key, listed, revision) is not None:
                return listed
            await self._abandon(lst, item_id, p, await self._winner(key, revision), "all")
        raise KVConflict(KV_LISTINGS, key, 10)

    def listed_at(self, item_id: str, order: tuple[int, int]) -> bool:
        """Whether this writer knows ``item_id`` listed in a state of ``order`` or newer
        (no round trip; ``False`` when it does not know)."""
        known = self.known.get(self._marker(item_id))
        return known is not None and bool(known[0].sp) and known[0].order >= order

    async def converge(self, tenant: str, item_id: str, state: str,
                       order: tuple[int, int]) -> None:
        """List ``item_id`` in ``state`` and no longer in its previous one (idempotent).
        ``order`` is (generation, rank of ``state``): an older state never wins."""
        await self.add(tenant, item_id)
        key = self._marker(item_id)
        for _ in range(20):
            # A known marker may be behind the bucket, never ahead (orders only grow): what
            # it says is listed or on its way is; anything else is settled by the writes.
            marker, revision, _ = await self._entry(self.markers, key)
            if marker is None:
                raise KVConflict(KV_LISTINGS, key, 0)
            if (marker.order >= order and marker.sp) or marker.pending_order > order:
                return  # listed there already, or a newer state is on its way
            retry = marker.pending == state and marker.pending_order == order
            if not retry:
                marker = marker.model_copy(update={"pending": state, "pending_order": order})
                written = await self._write(self.markers, key, marker, revision)
                if written is None:
                    continue
                revision = written
            done = await self._move(tenant, item_id, marker, state, order, retry)
            if await self._write(self.markers, key, done, revision) is not None:
                return
            await self._abandon(self._list(tenant, state), item_id, done.sp,
                                await self._winner(key, revision), state)
        raise KVConflict(KV_LISTINGS, key, 20)

    async def _move(self, tenant: str, item_id: str, marker: Marker, state: str,
                    order: tuple[int, int], retry: bool) -> Marker:
        """Enter ``state`` (idempotent), then leave the previous state's list."""
        lst = self._list(tenant, state)
        sp = await self._allocate(lst, item_id, lookback=retry)
        await self._bump(f"{lst}.live", f"in:{item_id}:{sp}", +1)
        if marker.state is not None and marker.sp and (marker.state, marker.sp) != (state, sp):
            await self._leave(self._list(tenant, marker.state), item_id, marker.sp)
        return marker.model_copy(update={"state": state, "sp": sp, "order": order,
                                         "pending": None, "pending_order": (0, 0)})

    async def _leave(self, lst: str, item_id: str, p: int) -> None:
        await self._update(self.slots, f"{lst}.{p}", lambda s: Slot(id="") if (
            s is not None and s.id == item_id) else None)
        await self._bump(f"{lst}.live" if ".s." in lst else f"{lst}.gone",
                         f"out:{item_id}:{p}", -1 if ".s." in lst else +1)

    async def _winner(self, key: str, lost_at: int) -> tuple[Marker, int] | None:
        """The marker whose write beat ours (based on revision ``lost_at``; 0: a create),
        with its revision.

        A clustered stream refuses a compare-and-set while another write of the same key
        is in flight, proposed but not yet applied (nats-server#6194): for a moment even
        the stream leader still shows ``lost_at``. Deciding on that view gave up a
        position the winner was about to name (a task missing from its state list in
        the cluster fault tests), so wait until the winner shows; a winner that never
        lands fails the step, which is retried whole."""
        for pause in (*WINNER_WAITS_S, None):
            found = await self.winners.get_entry(key)
            if (found[1] if found else 0) != lost_at:
                return found
            if pause is None:
                break
            await asyncio.sleep(pause)
        raise KVConflict(KV_LISTINGS, key, len(WINNER_WAITS_S))

    async def _abandon(self, lst: str, item_id: str, p: int,
                       won: tuple[Marker, int] | None, state: str) -> None:
        """Another writer listed the same id at the same moment: drop our position unless
        it is the one that won."""
        if won is None:
            return
        winner = won[0]
        kept = winner.all if state == "all" else (winner.sp if winner.state == state else 0)
        if p and p != kept:
            await self._leave(lst, item_id, p)

    # --- reading ----------------------------------------------------------------------

    async def _counts(self, *keys: str) -> list[int]:
        found = await self.direct.get_last(KV_LISTINGS, list(keys)) if self.direct else None
        if found is None:
            return list(await asyncio.gather(*(self._count(k, fresh=True) for k in keys)))
        return [Counter.model_validate_json(found[k]).n if k in found else 0 for k in keys]

    async def _slots(self, lst: str, positions: Sequence[int]) -> list[Slot | None]:
        """The slots at ``positions`` (``None``: not taken), in one batched direct get."""
        keys = [f"{lst}.{p}" for p in positions]
        found = await self.direct.get_last(KV_LISTINGS, keys) if self.direct else None
        if found is None:
            return list(await asyncio.gather(*(self.slots.get(k) for k in keys)))
        return [Slot.model_validate_json(found[k]) if k in found else None for k in keys]

    async def page(self, tenant: str, *, state: str | None = None, limit: int = 20,
                   offset: int = 0, cursor: Cursor | None = None) -> ListPage:
        """Ids newest first: the ``limit`` after ``offset`` skipped, or below ``cursor``."""
        lst = self._list(tenant, state)
        gone_or_live = f"{lst}.gone" if state is None else f"{lst}.live"
        n, other = await self._counts(f"{lst}.n", gone_or_live)
        total = n - other if state is None else other
        if cursor is not None:
            return await self._walk(lst, state, min(n, cursor.below - 1), limit, total)
        if state is None:  # dense: the offset is a position
            return await self._walk(lst, None, n - offset, limit, total)
        return await self._walk(lst, state, n, limit, total, skip=offset, stop_at_total=True)

    async def entries(self, tenant: str) -> list[tuple[int, str]]:
        """Every ``(position, id)`` of the tenant, newest first: O(the tenant's own list),
        for filters the lists do not index (a tenant's datasets, far fewer than tasks)."""
        n = (await self._counts(f"{self._list(tenant, None)}.n"))[0]
        found: list[tuple[int, str]] = []
        for top in range(n, 0, -MAX_CHUNK):
            positions = range(top, max(0, top - MAX_CHUNK), -1)
            slots = await self._slots(self._list(tenant, None), positions)
            found += [(p, s.id) for p, s in zip(positions, slots, strict=True) if s and s.id]
        return found

    async def _walk(self, lst: str, state: str | None, top: int, limit: int, total: int,
                    skip: int = 0, stop_at_total: bool = False) -> ListPage:
        """Down from ``top``, skipping entries that left, until ``limit`` are found, the
        bottom, or (``stop_at_total``, from the top) every live entry has been seen.

        Below a cursor the entries above may have left since, so only the bottom stops
        a state list's walk there."""
        found: list[tuple[int, str]] = []
        seen, p = 0, top
        chunk = min(limit + skip + 4, MAX_CHUNK)  # spares for entries that left; doubled
        while p > 0 and len(found) < limit and not (stop_at_total and seen >= total):
            positions = range(p, max(0, p - chunk), -1)
            chunk = min(2 * chunk, MAX_CHUNK)
            for pos, slot in zip(positions, await self._slots(lst, positions), strict=True):
                if slot is None or not slot.id or len(found) == limit:
                    continue
                seen += 1
                if skip:
                    skip -= 1
                else:
                    found.append((pos, slot.id))
            p = positions[-1] - 1
        last = found[-1][0] if found else 0
        more = len(found) == limit and last > 1 and not (stop_at_total and seen >= total)
        return ListPage([i for _, i in found], max(total, 0),
                        Cursor(state, last) if more else None)
