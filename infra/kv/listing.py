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
compare-and-set (reading is in infra/kv/listing_pages.py). The writers of one
process reserve positions in memory (:class:`NextPositions`) and queue their changes
of one counter behind one write (infra/kv/coalesce.py): a burst of one tenant's
tasks costs no lost creates and few counter writes.

Writers converge an id's entries to its current state (:meth:`ListingIndex.converge`):
every step is idempotent, so a writer killed half way is repaired by the
redelivery. A retry finds the position the killed writer took above the count
its marker recorded (``base``), however far the list has grown since, and a
counter remembers the changes of steps not yet recorded (infra/kv/counting.py),
so a retried step is counted once. A writer that loses the race to record a step
gives up the positions it took for it; one it could not give up (the bucket gone
mid-way) it gives up later (infra/kv/listing_repair.py), since the redelivery finds
the task listed by the winner and stops.

Each step is a KV round trip, so a writer remembers the entries it last read or
wrote (:class:`Known`) and starts each compare-and-set from that guess instead of
a read: a guess that is no longer current fails its write, and the writer reads
and decides again (as the projector's record cache does). A task's listing then
costs about half the round trips.

A state list keeps the positions of tasks that have left (``""``), newest into
the state first. Terminal states are never left (except by an on-call redrive), so their lists
stay dense; a transient state (requested, ready, running) costs the entries that
passed through it since its oldest live task.
"""

from __future__ import annotations

import asyncio
from typing import NamedTuple

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from infra.bus.topology import KV_LISTINGS
from infra.errors import KVConflict
from infra.kv.counting import Counter
from infra.kv.direct import DirectReader
from infra.kv.listing_marker import Counted, Marker, all_base
from infra.kv.listing_pages import Slot
from infra.kv.listing_repair import Owed
from infra.kv.listing_writes import ListingWrites
from infra.kv.repository import KVRepository, leader_reads

LOOKBACK = 64
"""Positions searched below the counter, for a marker that does not say where to look."""
LOOKAHEAD = 256
"""Positions searched at once above the counter by a retry, which stops at the first
window of them all free. Free positions below a killed writer's are the other lanes'
(up to a fetched batch, 64, per process: the task index handles them side by side),
reserved and never or not yet created; 256 covers two processes' with room."""
TASKS = "t"
DATASETS = "d"
"""The kinds of lists: each has its own keys in the bucket."""


class Added(NamedTuple):
    """What ``_add`` did: the marker (as read or written), whether this call named the
    state being entered (no position taken for it yet), and the position it took in the
    list of all that no marker records yet (0: none; recorded with the state's)."""
    marker: Marker
    fresh: bool
    unrecorded: int


class ListingIndex(ListingWrites):
    """The numbered lists of one kind of object (``t`` tasks, ``d`` datasets): the steps
    of writing them here, their writes in :class:`ListingWrites`, reading in
    :class:`~infra.kv.listing_pages.ListingPages`."""

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

    async def _allocate(self, lst: str, item_id: str, base: int | None, lookback: bool,
                        taken: list[Owed], state: str) -> int:
        """The position of ``item_id`` in ``lst`` (of ``state``): taken now above ``base``,
        or found where a killed writer already took it (``lookback``); added to ``taken``.
        Starts above the known count; another writer's positions since then send it to
        the count read afresh."""
        top = max(await self._count(f"{lst}.n", fresh=lookback), base or 0)
        if lookback and (found := await self._taken_for(lst, item_id, base, top)):
            taken.append(Owed(lst, item_id, state, found))
            await self.counts.raise_to(f"{lst}.n", found)
            return found
        p, fresh = self.positions.reserve(lst, top + 1), lookback
        while (revision := await self._take(lst, p, item_id)) is None:
            if not fresh:
                fresh = True
                count = await self._count(f"{lst}.n", fresh=True)
                p = self.positions.reserve(lst, max(p, count) + 1)
                continue
            holder = await self.owners.get(f"{lst}.{p}")
            if holder is not None and holder.id == item_id:
                break
            p = self.positions.reserve(lst, p + 1)
        taken.append(Owed(lst, item_id, state, p))
        if revision is not None:
            self.known.put(f"{lst}.{p}", Slot(id=item_id), revision)
        await self.counts.raise_to(f"{lst}.n", p)
        return p

    async def _taken_for(self, lst: str, item_id: str, base: int | None, top: int) -> int:
        """The position a killed writer took for ``item_id`` (0: none), searched above
        ``base``, oldest first, read from the stream leader (a replica may still show an
        id in a position given up since). A retry comes after a fault, when a burst may
        have taken many positions since, and a process's writers take positions well
        above the count before it moves: the search goes on above the count until
        :data:`LOOKAHEAD` positions in a row are free."""
        low = (max(0, top - LOOKBACK) if base is None else base) + 1
        while True:
            positions = range(low, low + LOOKAHEAD)
            found = await asyncio.gather(*(self.owners.get(f"{lst}.{p}") for p in positions))
            for p, slot in zip(positions, found, strict=True):
                if slot is not None and slot.id == item_id:
                    return p
            if low > top and all(slot is None for slot in found):
                return 0
            low += LOOKAHEAD

    async def _take(self, lst: str, p: int, item_id: str) -> int | None:
        try:
            return await self.slots.create(f"{lst}.{p}", Slot(id=item_id))
        except BaseException:
            self.positions.release(lst, p)
            raise

    async def add(self, tenant: str, item_id: str) -> Marker:
        """List ``item_id`` under ``tenant`` once (idempotent): its marker. A new id whose
        marker names a state is left to the writer entering it (its position in the list
        of all is recorded with that state's): the marker then has ``all == 0``."""
        taken: list[Owed] = []
        try:
            return (await self._add(tenant, item_id, None, taken)).marker
        except BaseException:
            self.repairs.owe(taken)  # see converge
            raise

    async def _add(self, tenant: str, item_id: str,
                   entering: tuple[str, tuple[int, int]] | None, taken: list[Owed]) -> Added:
        """``add``; with ``entering`` (state, order), a new id's marker names the state it
        enters (``pending``, and that list's count as ``base``) from its creation, and its
        position in the list of all is recorded with that state's (:class:`Added`)."""
        key, lst = self._marker(item_id), self._list(tenant, None)
        for _ in range(10):
            found, created = self.known.get(key), False
            if found is None:  # most likely a new id: its marker first, so a retry looks back
                new = await self._new_marker(tenant, entering)
                revision = await self.markers.create(key, new)
                found, created = ((new, revision), True) if revision else (
                    await self._winner(key, 0), False)
                if found is None:
                    continue
                self.known.put(key, *found)
            marker, revision = found
            if marker.all:  # a position in the list of all is never given up: a guess will do
                return Added(marker, False, 0)
            named = (marker.pending, marker.pending_order) if marker.pending else None
            if named and (entering is None or entering[1] < named[1]):
                return Added(marker, False, 0)  # listed by the writer entering the state named
            p = await self._allocate(lst, item_id, all_base(marker), not created, taken, "all")
            if named and entering == named:
                # Named with the marker (by this call, or a writer killed or still at it):
                # the position is recorded with the state's, one marker write fewer. No
                # write here: one naming the same state without its position would make
                # that writer give up a position that this call may adopt.
                return Added(marker, created, p)
            update: dict[str, object] = {"all": p}
            if entering is not None:  # nothing named yet, or an older state: replaced
                update |= await self._entering(tenant, *entering)
            listed = marker.model_copy(update=update)
            if await self._write(self.markers, key, listed, revision) is not None:
                return Added(listed, "pending" in update, 0)
            await self._give_up(key, revision, [Owed(lst, item_id, "all", p)], taken)
        raise KVConflict(KV_LISTINGS, key, 10)

    async def _new_marker(self, tenant: str,
                          entering: tuple[str, tuple[int, int]] | None) -> Marker:
        """A new id's marker: the counts of the lists it enters, read before any position
        is taken for it (with ``entering``, that state named too)."""
        base = await self._count(f"{self._list(tenant, None)}.n")
        new = Marker(tenant=tenant, base=base, all_base=base)
        if entering is None:
            return new
        return new.model_copy(update=await self._entering(tenant, *entering))

    def listed_at(self, item_id: str, order: tuple[int, int]) -> bool:
        """Whether this writer knows ``item_id`` listed in a state of ``order`` or newer
        (no round trip; ``False`` when it does not know)."""
        known = self.known.get(self._marker(item_id))
        return known is not None and bool(known[0].sp) and known[0].order >= order

    async def converge(self, tenant: str, item_id: str, state: str,
                       order: tuple[int, int]) -> None:
        """List ``item_id`` in ``state`` and no longer in its previous one (idempotent).
        ``order`` is (generation, rank of ``state``): an older state never wins."""
        taken: list[Owed] = []
        try:
            await self._converge(tenant, item_id, state, order, taken)
        except BaseException:  # what this writer guessed of the marker is read afresh next
            self.known.drop(self._marker(item_id))
            # The positions it took: the redelivery adopts them (the marker names the list
            # being entered) unless another writer's step is recorded first; then they are
            # given up (infra/kv/listing_repair.py). Those recorded or given up: no-ops.
            self.repairs.owe(taken)
            raise

    async def _converge(self, tenant: str, item_id: str, state: str,
                        order: tuple[int, int], taken: list[Owed]) -> None:
        added = await self._add(tenant, item_id, (state, order), taken)
        fresh, unrecorded = added.fresh, added.unrecorded
        key = self._marker(item_id)
        for _ in range(20):
            # A known marker may be behind the bucket, never ahead (orders only grow): what
            # it says is listed or on its way is; anything else is settled by the writes.
            marker, revision, _ = await self._entry(self.markers, key)
            if marker is None:
                raise KVConflict(KV_LISTINGS, key, 0)
            if unrecorded and marker.all:  # recorded by another writer (never changed after)
                await self._give_up(key, revision, [Owed(self._list(tenant, None), item_id,
                                                         "all", unrecorded)], taken,
                                    won=(marker, revision))
                unrecorded = 0
            if unrecorded:  # its position in the list of all goes with this step's write
                marker = marker.model_copy(update={"all": unrecorded})
            if (marker.order >= order and marker.sp) or marker.pending_order > order:
                return  # listed there already, or a newer state is on its way
            named = marker.pending == state and marker.pending_order == order
            retry, fresh = named and not fresh, False  # named by this call: nothing taken
            if not named:
                marker = marker.model_copy(update=await self._entering(tenant, state, order))
                written = await self._write(self.markers, key, marker, revision)
                if written is None:
                    continue
                revision = written
            done, changes = await self._move(tenant, item_id, marker, state, order, retry,
                                             taken)
            if await self._write(self.markers, key, done, revision) is not None:
                self._confirm(changes)
                return
            lost = [Owed(self._list(tenant, state), item_id, state, done.sp)]
            if unrecorded:
                lost.append(Owed(self._list(tenant, None), item_id, "all", unrecorded))
                unrecorded = 0
            await self._take_back(changes, done, await self._give_up(key, revision, lost,
                                                                     taken))
        raise KVConflict(KV_LISTINGS, key, 20)

    async def _entering(self, tenant: str, state: str,
                        order: tuple[int, int]) -> dict[str, object]:
        """A marker's fields naming the state it enters, with that list's count (``base``),
        read before any position is taken for it, so a retry searches above."""
        base = await self._count(f"{self._list(tenant, state)}.n")
        return {"pending": state, "pending_order": order, "base": base}

    async def _move(self, tenant: str, item_id: str, marker: Marker, state: str,
                    order: tuple[int, int], retry: bool,
                    taken: list[Owed]) -> tuple[Marker, list[Counted]]:
        """Enter ``state`` (idempotent), then leave the previous state's list: the
        marker recording it, and the counter changes to confirm once it is."""
        lst = self._list(tenant, state)
        sp = await self._allocate(lst, item_id, marker.base, retry, taken, state)
        changes = [await self._count_change(f"{lst}.live", f"in:{item_id}:{sp}", +1)]
        if marker.state is not None and marker.sp and (marker.state, marker.sp) != (state, sp):
            changes.append(await self._leave(self._list(tenant, marker.state), item_id,
                                             marker.sp))
        counted = (changes[0].counted, len(changes) > 1 and changes[1].counted)
        return marker.model_copy(update={
            "state": state, "sp": sp, "order": order, "pending": None,
            "pending_order": (0, 0), "counted": counted}), changes
