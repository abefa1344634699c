"""The writes of the lists (infra/kv/listing.py): compare-and-set from what a writer
knows (:class:`~infra.kv.known.Known`), counter changes with step tokens
(infra/kv/counting.py), and giving up what a writer took for a step that another
writer recorded first (owed to infra/kv/listing_repair.py when that fails)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import TypeVar

from pydantic import BaseModel

from infra.bus.topology import KV_LISTINGS
from infra.errors import KVConflict
from infra.kv.counting import Counter, StepCounters
from infra.kv.direct import DirectReader
from infra.kv.known import Known, NextPositions
from infra.kv.listing_marker import Counted, Marker
from infra.kv.listing_pages import ListingPages, Slot
from infra.kv.listing_repair import Owed, Repairs, winner_of
from infra.kv.repository import KVRepository

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)


class ListingWrites(ListingPages):
    """The writes every step of a listing is made of (the steps: ListingIndex)."""

    def __init__(self, kv: KVRepository[Slot], counters: KVRepository[Counter],
                 markers: KVRepository[Marker], kind: str,
                 direct: DirectReader | None = None,
                 winners: KVRepository[Marker] | None = None,
                 owners: KVRepository[Slot] | None = None) -> None:
        super().__init__(kv, counters, kind, direct)
        self.markers = markers
        self.winners = winners or markers
        self.owners = owners or kv
        """Markers read through the stream leader: what a writer that lost a race learns
        there is never older than the winner's write (a replica's answer may be, and a
        position two writers share would be given up under the winner). ``owners``:
        slots read there too, before a position is adopted as one's own (a replica may
        still show an id in a position given up since)."""
        self.known = Known()
        self.counts = StepCounters(lambda key, change: self._update(self.counters, key, change))
        self.positions = NextPositions()
        self.repairs = Repairs(self._settle)

    def _marker(self, item_id: str) -> str:
        return f"m{self.kind}.{item_id}"

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

    async def _leave(self, lst: str, item_id: str, p: int) -> Counted:
        await self._empty(lst, item_id, p)
        state_list = ".s." in lst
        return await self._count_change(f"{lst}.live" if state_list else f"{lst}.gone",
                                        f"out:{item_id}:{p}", -1 if state_list else +1)

    async def _empty(self, lst: str, item_id: str, p: int) -> bool:
        """Position ``p`` emptied if it holds ``item_id``: whether this call emptied it."""
        emptied = False

        def change(slot: Slot | None) -> Slot | None:
            nonlocal emptied
            emptied = slot is not None and slot.id == item_id
            return Slot(id="") if emptied else None
        await self._update(self.slots, f"{lst}.{p}", change)
        return emptied

    async def _count_change(self, key: str, token: str, delta: int) -> Counted:
        return Counted(key, token, delta, await self.counts.bump(key, token, delta))

    def _confirm(self, changes: list[Counted]) -> None:
        for change in changes:
            self.counts.confirm(change.key, change.token)

    async def _take_back(self, changes: list[Counted], ours: Marker,
                         won: tuple[Marker, int] | None) -> None:
        """We lost the race to record a step that the winner recorded too (a retry while
        the first writer was frozen, not dead): each change both of us counted (its
        token forgotten in between) is counted once more than it happened; take it back.
        Then confirm ours. Not covered: a writer frozen (a paused process, not a paused
        NATS node: a late compare-and-set fails) past its retry's next step, so that the
        winner's marker no longer says what that retry counted."""
        winner = won[0] if won else None
        if winner and (winner.state, winner.order) == (ours.state, ours.order):
            both = [changes[0].counted and winner.sp == ours.sp and winner.counted[0],
                    len(changes) > 1 and changes[1].counted and winner.counted[1]]
            for change, twice in zip(changes, both, strict=False):
                if twice:
                    self._confirm([await self._count_change(
                        change.key, f"undo:{uuid.uuid4().hex}:{change.token}", -change.delta)])
        self._confirm(changes)

    async def _winner(self, key: str, lost_at: int) -> tuple[Marker, int] | None:
        """The marker whose write beat ours, with its revision (infra/kv/listing_repair.py)."""
        return await winner_of(self.winners, key, lost_at)

    async def _give_up(self, key: str, lost_at: int, lost: list[Owed], taken: list[Owed],
                       won: tuple[Marker, int] | None = None) -> tuple[Marker, int] | None:
        """We lost the marker write (based on revision ``lost_at``): give up the positions
        taken for it that the winner (read now unless given) does not record. A failure
        leaves them to the step's caller, which owes everything in ``taken``
        (infra/kv/listing_repair.py); the one being given up is marked ``touched`` there."""
        won = won or await self._winner(key, lost_at)
        for owed in lost:
            try:
                await self._abandon(owed.lst, owed.item_id, owed.p, won, owed.state)
            except BaseException:  # its slot may be emptied already, its count changed
                taken[:] = [t._replace(touched=True) if t == owed else t for t in taken]
                raise
        return won

    async def _settle(self, owed: Owed) -> bool:
        """An owed position given up unless its marker records it (adopted by a retry);
        left for later while the marker names its list as being entered (a retry there
        may still adopt it). Counted out only when this writer empties it (now, or in a
        give-up that failed): a retry may have adopted it and a later step left it,
        emptied and counted out there; and a state list's entering only as far as it is
        still counted (:meth:`StepCounters.take_back`)."""
        lst, item_id, state, p, touched = owed
        found = await self.winners.get_entry(self._marker(item_id))
        if found is None:  # markers are never deleted: nothing to decide on
            log.warning("listing: no marker for %s; %s left as it is", item_id, owed)
            return True
        verdict = _verdict(found[0], owed)
        if verdict is not None:
            return verdict
        self.repairs.touch(owed)  # a failure from here on may leave it emptied
        emptied = await self._empty(lst, item_id, p)
        if emptied and await self._adopted_meanwhile(owed):
            return False
        if not (emptied or touched):  # emptied by a step that left it: counted out there
            return True
        if state != "all":  # entering was counted with a token that only its step drops
            await self.counts.take_back(f"{lst}.live", f"in:{item_id}:{p}", +1,
                                        unless=f"out:{item_id}:{p}")
        else:
            await self.counts.bump(f"{lst}.gone", f"out:{item_id}:{p}", +1)
        return True

    async def _adopted_meanwhile(self, owed: Owed) -> bool:
        """Read again once emptied: a retry that named the list after the first read may
        have adopted the position just before it was emptied. Then it is put back (not
        emptied by this writer after all) and stays owed."""
        found = await self.winners.get_entry(self._marker(owed.item_id))
        if found is None or _verdict(found[0], owed) is None:
            return False
        key = f"{owed.lst}.{owed.p}"
        known = self.known.get(key)  # the emptied slot, as this writer wrote it
        if known is not None and await self._write(self.slots, key, Slot(id=owed.item_id),
                                                   known[1]) is not None:
            self.repairs.touch(owed, touched=False)
        return True

    async def _abandon(self, lst: str, item_id: str, p: int,
                       won: tuple[Marker, int] | None, state: str) -> None:
        """Another writer listed the same id at the same moment: drop our position unless
        it is the one that won."""
        if won is not None and p and p != _recorded(won[0], state):
            self._confirm([await self._leave(lst, item_id, p)])


def _verdict(marker: Marker, owed: Owed) -> bool | None:
    """What ``marker`` says of an owed position: ``False`` while it names the position's
    list as being entered (a retry may adopt it), ``True`` once it records it, ``None``:
    to be given up."""
    if not marker.all if owed.state == "all" else marker.pending == owed.state:
        return False
    return True if owed.p == _recorded(marker, owed.state) else None


def _recorded(marker: Marker, state: str) -> int:
    """The position ``marker`` records in the list of ``state`` (``all``: of all); 0: none."""
    return marker.all if state == "all" else marker.sp if marker.state == state else 0
