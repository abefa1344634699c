"""Reading the numbered lists of infra/kv/listing.py: a page costs the same whatever
the history.

A page is one batched direct get of the counters, one of ``limit`` (and a few
spare) positions, and one of the records (infra/kv/direct.py). Newest first is
highest position first; a cursor is the position to continue below, so tasks added
meanwhile never shift a page. A state list keeps the positions of tasks that have
left (``""``): a reader skips them and, on a first page, stops once it has seen as
many live entries as the live counter says.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from pydantic import BaseModel

from infra.bus.topology import KV_LISTINGS
from infra.kv.counting import Counter
from infra.kv.direct import DirectReader
from infra.kv.pages import Cursor, ListPage
from infra.kv.repository import KVRepository

MAX_CHUNK = 1024
"""Most positions read in one batch while skipping entries that left a state."""


class Slot(BaseModel):
    id: str
    """The id listed at a position; ``""`` once it has left (a state list)."""


class ListingPages:
    """Pages of the lists of one kind (``t`` tasks, ``d`` datasets)."""

    def __init__(self, slots: KVRepository[Slot], counters: KVRepository[Counter], kind: str,
                 direct: DirectReader | None) -> None:
        self.slots, self.counters, self.kind, self.direct = slots, counters, kind, direct

    def _list(self, tenant: str, state: str | None) -> str:
        return f"{self.kind}.{tenant}.all" if state is None else f"{self.kind}.{tenant}.s.{state}"

    async def _counts(self, *keys: str) -> list[int]:
        found = await self.direct.get_last(KV_LISTINGS, list(keys)) if self.direct else None
        if found is None:
            counters = await asyncio.gather(*(self.counters.get(k) for k in keys))
            return [c.n if c else 0 for c in counters]
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
