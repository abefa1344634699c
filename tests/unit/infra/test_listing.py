"""Numbered per-tenant lists (infra/kv/listing.py) over the in-memory KeyValue."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from typing import Any, cast

import pytest
from nats.js.errors import KeyWrongLastSequenceError

from infra.bus.topology import KV_LISTINGS
from infra.errors import KVConflict
from infra.kv import counting, listing_repair
from infra.kv.known import Known
from infra.kv.listing import TASKS, ListingIndex, Slot
from infra.kv.listing_marker import Marker
from infra.kv.pages import Cursor
from schemas.record import STATE_RANK
from tests.support.fake_kv import FakeJetStream


@pytest.fixture
async def index() -> ListingIndex:
    return await ListingIndex.open(cast(Any, FakeJetStream(KV_LISTINGS)), TASKS)


async def enter(index: ListingIndex, task_id: str, state: str, generation: int = 1,
                tenant: str = "acme") -> None:
    await index.converge(tenant, task_id, state, (generation, STATE_RANK[state]))


async def every_page(index: ListingIndex, tenant: str, state: str | None = None,
                     limit: int = 3) -> list[str]:
    ids: list[str] = []
    page = await index.page(tenant, state=state, limit=limit)
    ids += page.ids
    while page.next is not None:
        page = await index.page(tenant, state=state, limit=limit,
                                cursor=Cursor.decode(page.next.encode()))
        ids += page.ids
    return ids


def test_cursor_round_trips_and_refuses_what_it_did_not_write() -> None:
    for cursor in (Cursor(None, 7), Cursor("running", 1)):
        assert Cursor.decode(cursor.encode()) == cursor
    for token in ("", "nope", "djE6LTow", Cursor(None, 3).encode() + "x"):
        with pytest.raises(ValueError):
            Cursor.decode(token)


async def test_add_is_idempotent_and_pages_are_newest_first(index: ListingIndex) -> None:
    for i in range(10):
        await index.add("acme", f"t{i}")
        await index.add("acme", f"t{i}")  # a redelivery
    page = await index.page("acme", limit=4)
    assert page.ids == ["t9", "t8", "t7", "t6"] and page.total == 10
    assert (await index.page("acme", limit=4, offset=8)).ids == ["t1", "t0"]
    assert (await index.page("acme", limit=4, offset=10)).ids == []
    assert await every_page(index, "acme") == [f"t{i}" for i in reversed(range(10))]
    assert (await index.page("other", limit=4)).ids == []


async def test_cursor_pages_are_exact_while_items_are_added(index: ListingIndex) -> None:
    for i in range(7):
        await index.add("acme", f"t{i}")
    page = await index.page("acme", limit=3)
    seen = list(page.ids)
    n = 7
    while page.next is not None:
        await index.add("acme", f"t{n}")  # newer than everything paged so far
        n += 1
        page = await index.page("acme", limit=3, cursor=page.next)
        seen += page.ids
    assert seen == [f"t{i}" for i in reversed(range(7))]


async def test_state_lists_follow_transitions(index: ListingIndex) -> None:
    for i in range(6):
        await enter(index, f"t{i}", "requested")
    for i in range(4):
        await enter(index, f"t{i}", "ready")
    await enter(index, "t4", "rejected")
    for i in range(3):
        await enter(index, f"t{i}", "running")
    await enter(index, "t0", "completed")
    await enter(index, "t0", "completed")  # a replay changes nothing
    expect = {"requested": ["t5"], "ready": ["t3"], "rejected": ["t4"],
              "running": ["t2", "t1"], "completed": ["t0"], "failed": []}
    for state, ids in expect.items():
        page = await index.page("acme", state=state, limit=10)
        assert (page.ids, page.total) == (ids, len(ids)), state
        assert await every_page(index, "acme", state, limit=1) == ids, state
    assert (await index.page("acme", limit=10)).total == 6


async def test_an_older_state_never_replaces_a_newer_one(index: ListingIndex) -> None:
    await enter(index, "t1", "running")
    await enter(index, "t1", "ready")  # a late, slow writer
    assert (await index.page("acme", state="running")).ids == ["t1"]
    assert (await index.page("acme", state="ready")).ids == []


async def test_a_redrive_moves_the_task_back(index: ListingIndex) -> None:
    await enter(index, "t1", "failed")
    await enter(index, "t1", "ready", generation=2)
    assert (await index.page("acme", state="failed")).total == 0
    assert (await index.page("acme", state="ready")).ids == ["t1"]
    await enter(index, "t1", "failed", generation=2)
    page = await index.page("acme", state="failed")
    assert (page.ids, page.total) == (["t1"], 1)


async def test_concurrent_writers_take_distinct_positions(index: ListingIndex) -> None:
    await asyncio.gather(*(enter(index, f"t{i}", "requested") for i in range(40)))
    await asyncio.gather(*(enter(index, f"t{i}", "ready") for i in range(0, 40, 2)))
    ids = await every_page(index, "acme", limit=7)
    assert sorted(ids) == sorted(f"t{i}" for i in range(40)) and len(ids) == 40
    assert (await index.page("acme")).total == 40
    ready = await every_page(index, "acme", "ready", limit=7)
    assert sorted(ready) == sorted(f"t{i}" for i in range(0, 40, 2))
    assert (await index.page("acme", state="requested")).total == 20


async def test_the_same_task_from_two_writers_is_listed_once(index: ListingIndex) -> None:
    await asyncio.gather(*(enter(index, "t1", "requested") for _ in range(4)))
    await asyncio.gather(*(enter(index, "t1", "running") for _ in range(4)))
    assert await every_page(index, "acme") == ["t1"]
    assert await every_page(index, "acme", "running") == ["t1"]
    assert (await index.page("acme", state="running")).total == 1
    assert (await index.page("acme", state="requested")).total == 0
    assert (await index.page("acme")).total == 1


async def test_a_writer_killed_half_way_is_repaired_by_the_retry(
        index: ListingIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    await enter(index, "t1", "requested")
    real_leave = index._leave

    async def killed(*args: Any) -> None:
        raise ConnectionError("killed after taking a position in 'ready'")

    monkeypatch.setattr(index, "_leave", killed)
    with pytest.raises(ConnectionError):
        await enter(index, "t1", "ready")
    monkeypatch.setattr(index, "_leave", real_leave)
    await enter(index, "t1", "ready")  # the redelivery
    assert (await index.page("acme", state="ready")).ids == ["t1"]
    assert (await index.page("acme", state="ready")).total == 1
    assert (await index.page("acme", state="requested")).total == 0
    marker = await index.markers.get("mt.t1")
    assert isinstance(marker, Marker) and marker.sp == 1 and marker.pending is None


async def test_a_new_task_names_its_state_in_the_write_of_its_position(
        index: ListingIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new id converged straight to a state: its marker is created naming the state it
    enters (and the counts of both lists), then written with both positions: two marker
    writes (four when each was written on its own). Killed after taking both positions,
    the retry finds them (above the counts the marker holds) instead of taking others."""
    writes: list[str] = []
    for name in ("create", "compare_and_set"):
        real = getattr(index.markers, name)

        async def logged(*args: Any, _real: Any = real, _name: str = name) -> Any:
            writes.append(_name)
            return await _real(*args)
        monkeypatch.setattr(index.markers, name, logged)
    await enter(index, "t0", "rejected")
    assert writes == ["create", "compare_and_set"]
    marker = await index.markers.get("mt.t0")
    assert isinstance(marker, Marker) and (marker.all, marker.state, marker.sp) == (
        1, "rejected", 1) and marker.pending is None

    real_bump = index.counts.bump

    async def killed(*args: Any) -> bool:
        raise ConnectionError("killed after taking a position in 'rejected'")

    monkeypatch.setattr(index.counts, "bump", killed)
    with pytest.raises(ConnectionError):
        await enter(index, "t1", "rejected")
    named = await index.markers.get("mt.t1")
    assert isinstance(named, Marker) and named.all == 0 and named.pending == "rejected"
    assert (named.all_base, named.base) == (1, 1)  # the lists' counts when t1 named it
    monkeypatch.setattr(index.counts, "bump", real_bump)
    index.known = Known()  # the redelivery, in a new process
    await enter(index, "t1", "rejected")
    page = await index.page("acme", state="rejected")
    assert page.ids == ["t1", "t0"] and page.total == 2
    assert await index.slots.get("t.acme.s.rejected.3") is None  # no second position
    assert await index.slots.get("t.acme.all.3") is None
    assert (await index.page("acme")).ids == ["t1", "t0"]
    assert (await index.page("acme")).total == 2


class Gated:
    """Pauses an index's marker writes that record a state: the n-th waits for ``go(n)``
    once it has said ``reached(n)``."""

    def __init__(self, index: ListingIndex, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reached: dict[int, asyncio.Event] = defaultdict(asyncio.Event)
        self.go: dict[int, asyncio.Event] = defaultdict(asyncio.Event)
        self.calls = 0
        real = index.markers.compare_and_set

        async def gated(key: str, value: Marker, revision: int) -> int | None:
            if value.state is not None:
                self.calls += 1
                n = self.calls
                self.reached[n].set()
                await self.go[n].wait()
            return await real(key, value, revision)
        monkeypatch.setattr(index.markers, "compare_and_set", gated)


async def test_a_second_writer_of_a_new_task_never_has_the_first_give_up_what_it_adopts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes enter a new task in the same state at once. The first created its
    marker naming the state and took both positions; the second finds and adopts them.
    A marker write of the second's before it records the state (its position in the
    list of all alone) made the first lose its write, give up the state position the
    second had adopted, and the second record it: listed nowhere (the cluster fault
    tests saw it). Now only writes that record the state are made."""
    js = FakeJetStream(KV_LISTINGS)
    first, second = [await ListingIndex.open(cast(Any, js), TASKS) for _ in range(2)]
    one, two = Gated(first, monkeypatch), Gated(second, monkeypatch)
    a = asyncio.create_task(enter(first, "t1", "rejected"))
    await one.reached[1].wait()  # both positions taken, about to record them
    b = asyncio.create_task(enter(second, "t1", "rejected"))
    await two.reached[1].wait()  # the same positions found, about to record them
    one.go[1].set()
    await asyncio.wait([a, asyncio.create_task(one.reached[2].wait())],
                       return_when=asyncio.FIRST_COMPLETED)
    two.go[1].set()
    await b
    one.go[2].set()
    await a
    assert await every_page(first, "acme", "rejected") == ["t1"]
    assert (await first.page("acme", state="rejected")).total == 1
    assert await every_page(first, "acme") == ["t1"] and (await first.page("acme")).total == 1


async def test_a_position_in_all_taken_while_another_writer_recorded_its_own_is_given_up(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The creator of a new task's marker is slow to take its position in the list of
    all; meanwhile another process takes another and records the task whole, and the
    creator's cache forgets the marker (evicted). The creator reads the winner's marker
    first thing in its step: its own position is given up, not left listed twice."""
    js = FakeJetStream(KV_LISTINGS)
    first, second = [await ListingIndex.open(cast(Any, js), TASKS) for _ in range(2)]
    go, paused = asyncio.Event(), asyncio.Event()
    real = first.slots.create

    async def slow(key: str, value: Slot) -> int | None:
        if key.startswith("t.acme.all.") and not go.is_set():
            paused.set()
            await go.wait()
        return await real(key, value)
    monkeypatch.setattr(first.slots, "create", slow)
    a = asyncio.create_task(enter(first, "t1", "rejected"))
    await paused.wait()  # marker created naming 'rejected'; its position not taken yet
    await enter(second, "t1", "rejected")
    first.known = Known()
    go.set()
    await a
    assert await every_page(first, "acme") == ["t1"]
    assert (await first.page("acme")).total == 1
    assert await every_page(first, "acme", "rejected") == ["t1"]
    assert (await first.page("acme", state="rejected")).total == 1


# --- writers start from what they know (Known): fewer round trips, same lists ----------


class Counting:
    """Counts the bucket calls (each a KV round trip over NATS) of a fake bucket."""

    def __init__(self, kv: Any) -> None:
        self.calls = 0
        for name in ("get", "create", "update", "put"):
            setattr(self, name, self._counted(getattr(kv, name)))

    def _counted(self, call: Any) -> Any:
        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return await call(*args, **kwargs)
        return counted


async def counted_index() -> tuple[ListingIndex, Counting, Any]:
    """An index over a fake bucket whose calls are counted, the counter and the bucket."""
    js = FakeJetStream(KV_LISTINGS)
    kv = js.buckets[KV_LISTINGS]
    index = await ListingIndex.open(cast(Any, js), TASKS)
    counting = Counting(kv)
    for repo in (index.slots, index.counters, index.markers):
        repo._kv = cast(Any, counting)
    return index, counting, kv


async def test_a_task_listed_then_moved_costs_few_round_trips() -> None:
    index, counting, _ = await counted_index()
    await enter(index, "t0", "requested")
    await enter(index, "t0", "rejected")  # the counters are known from here on
    counting.calls = 0
    await index.add("acme", "t1")  # task.requested: listed at once
    await enter(index, "t1", "requested")
    await enter(index, "t1", "rejected")  # task.rejected
    await enter(index, "t1", "rejected")  # a redelivery: nothing to write, nothing read
    # 33 round trips when every write was a read, then a compare-and-set (16 now)
    assert counting.calls <= 18, counting.calls
    assert await every_page(index, "acme", "rejected") == ["t1", "t0"]
    assert (await index.page("acme", state="requested")).total == 0


async def test_writers_behind_each_other_keep_the_lists_exact() -> None:
    """Two processes: each one's known counters and markers fall behind the other's
    writes; their compare-and-sets fail and they read again."""
    js = FakeJetStream(KV_LISTINGS)
    a = await ListingIndex.open(cast(Any, js), TASKS)
    b = await ListingIndex.open(cast(Any, js), TASKS)
    for i in range(5):
        await enter(a, f"t{i}", "requested")
    for i in range(5, 10):
        await enter(b, f"t{i}", "requested")  # b's counters: read; a's are now behind
    await enter(a, "t10", "requested")
    await enter(b, "t0", "ready")  # a still knows t0's marker as requested
    await enter(a, "t0", "running")
    await enter(a, "t0", "ready")  # late: a knows running now, b's ready is older
    await enter(b, "t1", "ready")
    await enter(b, "t1", "requested")  # older than b's own write: nothing
    ids = await every_page(a, "acme", limit=4)
    assert sorted(ids) == sorted(f"t{i}" for i in range(11)) and len(ids) == 11
    assert (await b.page("acme")).total == 11
    assert await every_page(b, "acme", "running") == ["t0"]
    assert await every_page(a, "acme", "ready") == ["t1"]
    assert (await a.page("acme", state="requested")).total == 9
    positions = [m.all for m in [await a.markers.get(f"mt.t{i}") for i in range(11)] if m]
    assert sorted(positions) == list(range(1, 12))


def test_what_a_writer_knows_is_bounded_oldest_first() -> None:
    known = Known(size=2)
    for i in range(3):
        known.put(f"k{i}", Slot(id=f"t{i}"), i + 1)
    known.get("k1")
    assert known.get("k0") is None and known.get("k2") == (Slot(id="t2"), 3)
    known.put("k1", Slot(id="t1"), 9)  # rewritten: the newest
    known.put("k3", Slot(id="t3"), 10)
    assert known.get("k2") is None and known.get("k1") == (Slot(id="t1"), 9)
    known.drop("k1")
    assert known.get("k1") is None


async def test_a_burst_of_one_tenant_writes_its_counters_together() -> None:
    """60 tasks of one tenant at once, as the handler's lanes deliver them: positions
    are reserved in the process (no lost creates) and the counter changes queued behind
    one write go out as the next one (not one compare-and-set each, most of them lost)."""
    index, counting, kv = await counted_index()
    n = 60
    await asyncio.gather(*(enter(index, f"t{i}", "requested") for i in range(n)))
    await asyncio.gather(*(enter(index, f"t{i}", "rejected") for i in range(n)))
    # One at a time a task costs 16 round trips; uncoalesced, this burst took ~n²/2
    # lost compare-and-sets on the five shared counters besides (3,200 calls).
    assert kv.conflicts <= n // 4, kv.conflicts
    assert counting.calls <= 18 * n, counting.calls
    assert sorted(await every_page(index, "acme", limit=7)) == sorted(
        f"t{i}" for i in range(n))
    assert (await index.page("acme")).total == n
    assert (await index.page("acme", state="rejected")).total == n
    assert (await index.page("acme", state="requested")).total == 0
    positions = sorted(m.all for m in [await index.markers.get(f"mt.t{i}") for i in range(n)]
                       if m)
    assert positions == list(range(1, n + 1))  # dense: no position skipped


async def test_a_create_that_got_no_answer_leaves_no_gap(
        index: ListingIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    await index.add("acme", "t0")
    real_create = index.slots.create

    async def lost(key: str, value: Slot) -> int | None:
        raise TimeoutError(f"no answer for {key}")

    monkeypatch.setattr(index.slots, "create", lost)
    with pytest.raises(TimeoutError):
        await index.add("acme", "t1")
    monkeypatch.setattr(index.slots, "create", real_create)
    await index.add("acme", "t2")  # takes the position t1 could not
    await index.add("acme", "t1")  # the redelivery
    assert await every_page(index, "acme") == ["t1", "t2", "t0"]
    positions = [m.all for m in [await index.markers.get(f"mt.t{i}") for i in range(3)] if m]
    assert sorted(positions) == [1, 2, 3]


class InFlight:
    """A clustered stream's refusal while a write is in flight: writer A's write of the
    marker is proposed but not applied until released; meanwhile another writer's
    compare-and-set of that key is refused and every read still shows the old value."""

    def __init__(self, kv: Any, key: str) -> None:
        self.kv, self.key = kv, key
        self.held, self.refused, self.release = False, asyncio.Event(), asyncio.Event()
        self.holding = asyncio.Event()
        self.real_update = kv.update

    def hold_next_done(self, holder: Any) -> None:
        async def update(key: str, value: bytes, last: int | None = None, **kw: Any) -> int:
            if key == self.key and self.held:
                self.refused.set()
                raise KeyWrongLastSequenceError()
            if key == self.key and b'"pending":null' in value and not self.refused.is_set():
                self.held = True  # A's listed marker: in flight until released
                self.holding.set()
                await self.release.wait()
                self.held = False
            return int(await self.real_update(key, value, last=last, **kw))

        holder.update = update


async def test_a_loser_waits_for_the_winner_in_flight_before_giving_up_a_position(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Writer b shares writer a's position (a retry adopting it) and its write of the
    marker is refused while a's is in flight. Read then, the bucket still shows the
    pending marker: b must not give up the position a is about to name (the cluster
    fault tests saw tasks missing from their state list this way)."""
    js = FakeJetStream(KV_LISTINGS)
    kv = js.buckets[KV_LISTINGS]
    a = await ListingIndex.open(cast(Any, js), TASKS)
    b = await ListingIndex.open(cast(Any, js), TASKS)
    await enter(a, "t1", "requested")
    flight = InFlight(kv, "mt.t1")
    flight.hold_next_done(kv)
    first = asyncio.create_task(enter(a, "t1", "rejected"))
    await flight.holding.wait()
    second = asyncio.create_task(enter(b, "t1", "rejected"))  # the redelivery elsewhere
    await flight.refused.wait()
    await asyncio.sleep(0.02)  # b decides on what it reads now
    flight.release.set()
    await first
    with contextlib.suppress(KVConflict):  # transient: handed back for a redelivery
        await second
    await enter(b, "t1", "rejected")  # that redelivery: nothing left to do
    marker = await a.winners.get("mt.t1")
    assert isinstance(marker, Marker) and (marker.state, marker.sp) == ("rejected", 1)
    assert await a.slots.get("t.acme.s.rejected.1") == Slot(id="t1")
    assert await every_page(a, "acme", "rejected") == ["t1"]


async def leader_killed(*args: Any) -> Any:
    """A KV call that never got its answer: the stream leader killed under it."""
    raise TimeoutError("the stream leader was killed")


async def nothing_taken(*args: Any) -> int:
    """A look back that found no position (it looked before the other writer's showed)."""
    return 0


async def two_writers(state: str | None) -> tuple[ListingIndex, ListingIndex]:
    """Two processes over one bucket: t0 requested (by b), t1 too (by a) given a state."""
    js = FakeJetStream(KV_LISTINGS)
    a = await ListingIndex.open(cast(Any, js), TASKS)
    b = await ListingIndex.open(cast(Any, js), TASKS)
    await enter(b, "t0", "requested")
    if state:
        await enter(a, "t1", "requested")
    return a, b


@pytest.mark.parametrize("state", [None, "rejected"])
async def test_a_retry_finds_its_position_however_far_the_list_has_grown(
        state: str | None) -> None:
    """Writer a takes a position, then dies before its marker names it (a stream leader
    killed mid-burst); by the redelivery, elsewhere, a burst has taken many positions
    above it. The retry must adopt that position, not take a second one (the cluster
    fault tests saw a task twice in ``rejected`` this way)."""
    a, b = await two_writers(state)
    real = a.markers.compare_and_set

    async def dies_naming_it(key: str, value: Marker, revision: int) -> int | None:
        if value.all if state is None else value.state == state:
            raise TimeoutError("the leader was killed")
        return await real(key, value, revision)

    a.markers.compare_and_set = dies_naming_it  # type: ignore[method-assign]
    with pytest.raises(TimeoutError):
        await (a.add("acme", "t1") if state is None else enter(a, "t1", state))
    for i in range(2, 200):
        await (b.add("acme", f"t{i}") if state is None else enter(b, f"t{i}", state))
    await (b.add("acme", "t1") if state is None else enter(b, "t1", state))
    ids = await every_page(b, "acme", state, limit=50)
    assert ids.count("t1") == 1 and len(ids) == len(set(ids)) == 199 + (state is None)
    assert (await b.page("acme", state=state)).total == len(ids)


@pytest.mark.parametrize("frozen_before_counting", [True, False])
async def test_a_frozen_writer_and_its_retry_count_the_step_once(
        frozen_before_counting: bool) -> None:
    """Writer a is frozen half way through a step (a node stopped, not killed); the
    redelivery lists the task elsewhere, confirms and forgets its counter tokens; then
    a wakes and finishes the same step. Entering and leaving are counted once
    whichever of the two counted first."""
    js = FakeJetStream(KV_LISTINGS)
    a = await ListingIndex.open(cast(Any, js), TASKS)
    b = await ListingIndex.open(cast(Any, js), TASKS)
    await enter(a, "t1", "requested")
    frozen, thaw = asyncio.Event(), asyncio.Event()
    real_bump = a.counts.bump

    async def bump(key: str, token: str, delta: int) -> bool:
        if key.endswith("s.rejected.live") and frozen_before_counting:
            frozen.set()
            await thaw.wait()
        counted = await real_bump(key, token, delta)
        if key.endswith("s.requested.live") and not frozen_before_counting:
            frozen.set()
            await thaw.wait()
        return counted

    a.counts.bump = bump  # type: ignore[method-assign]
    first = asyncio.create_task(enter(a, "t1", "rejected"))
    await frozen.wait()
    await enter(b, "t1", "rejected")  # the redelivery elsewhere
    await enter(b, "t2", "requested")
    await enter(b, "t2", "rejected")  # b's next changes drop the tokens it confirmed
    thaw.set()
    with contextlib.suppress(KVConflict):
        await first
    assert await every_page(a, "acme", "rejected") == ["t2", "t1"]
    assert await live(a, "rejected") == 2 and await live(a, "requested") == 0  # unclamped


async def live(index: ListingIndex, state: str, tenant: str = "acme") -> int:
    """A state's live counter as stored (a page's total is never below 0)."""
    counter = await index.counters.get(f"t.{tenant}.s.{state}.live")
    return counter.n if counter else 0


async def test_retries_find_positions_a_killed_process_took_far_above_the_count() -> None:
    """A process's writers take positions above the count before it moves (a burst):
    killed before the count moved, its 200 positions lie up to 200 above it, and each
    redelivery elsewhere must find its own, not take a second."""
    js = FakeJetStream(KV_LISTINGS)
    a = await ListingIndex.open(cast(Any, js), TASKS)
    b = await ListingIndex.open(cast(Any, js), TASKS)

    async def killed(*args: Any) -> None:
        raise TimeoutError("the leader was killed")

    a.counts.raise_to = killed  # type: ignore[method-assign]
    await asyncio.gather(*(a.add("acme", f"t{i}") for i in range(200)), return_exceptions=True)
    await asyncio.gather(*(b.add("acme", f"t{i}") for i in range(200)))  # the redeliveries
    ids = [i for _, i in await b.entries("acme")]
    assert len(ids) == len(set(ids)) == 200 == (await b.page("acme")).total


async def test_counters_forget_confirmed_tokens_and_a_dead_writers_after_the_ttl(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What a counter remembers stays the steps in flight: the tokens of a burst's
    steps are dropped once recorded (with a later change, or alone shortly after), and
    those of a writer that died before recording its step once the TTL has passed."""
    monkeypatch.setattr(counting, "DROP_AFTER_S", 0.01)
    js = FakeJetStream(KV_LISTINGS)
    now = [1_000_000.0]
    for lifetime in range(3):  # a process per burst: nothing carried over in memory
        index = await ListingIndex.open(cast(Any, js), TASKS)
        index.counts.clock = lambda: now[0]
        ids = [f"g{lifetime}t{i}" for i in range(100)]
        await asyncio.gather(*(enter(index, t, "requested") for t in ids))
        await asyncio.gather(*(enter(index, t, "rejected") for t in ids))
        await asyncio.sleep(0.05)
        for state in ("requested", "rejected"):
            counter = await index.counters.get(f"t.acme.s.{state}.live")
            assert counter is not None and counter.recent == [], (lifetime, state)
    assert await live(index, "rejected") == 300 and await live(index, "requested") == 0
    dead = await ListingIndex.open(cast(Any, js), TASKS)
    dead.counts.clock = lambda: now[0]
    await dead.counts.bump("t.acme.s.rejected.live", "in:x:1", +1)  # never confirmed
    now[0] += counting.TOKEN_TTL_S + 120
    await index.counts.bump("t.acme.s.rejected.live", "in:y:2", +1)
    counter = await index.counters.get("t.acme.s.rejected.live")
    assert counter is not None and [t[:12] for t in counter.recent] == [
        counting.digest("in:y:2")]


def test_a_retry_searches_past_what_two_processes_lanes_can_leave_free() -> None:
    """The task index handles a fetched batch's tasks side by side: each process may hold
    a batch of positions reserved and not (yet) created below a killed writer's. A retry
    stops at the first window of free positions, so a window must outlast two batches."""
    from infra.bus.subscriber import Subscriber
    from infra.kv import listing

    batch = Subscriber.__dataclass_fields__["batch"].default  # the task index's
    assert listing.LOOKAHEAD >= 2 * batch



class Recording:
    """Holds an index's marker write that records ``t1``'s step (its state, or with no
    state its position in the list of all) until ``go`` is set."""

    def __init__(self, index: ListingIndex, state: str | None,
                 monkeypatch: pytest.MonkeyPatch) -> None:
        self.reached, self.go = asyncio.Event(), asyncio.Event()
        real = index.markers.compare_and_set

        async def held(key: str, value: Marker, revision: int) -> int | None:
            if key == "mt.t1" and ((value.state == state and value.pending is None)
                                   if state else bool(value.all)):
                self.reached.set()
                await self.go.wait()
            return await real(key, value, revision)
        monkeypatch.setattr(index.markers, "compare_and_set", held)


@pytest.mark.parametrize("fails", ["_winner", "_leave"])
@pytest.mark.parametrize("state", [None, "rejected"])
async def test_positions_a_loser_could_not_give_up_are_given_up_later(
        fails: str, state: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writers a and b each take a position for the same step (each looked before the
    other's showed); a records its own, b loses the marker write, and reading the winner
    or giving its position up fails (the stream leader killed under it). The redelivery
    finds the task listed and does nothing, so b's position stayed listed beside a's:
    the task twice in its list and counted twice. b gives it up once the bucket answers."""
    a, b = await two_writers(state)

    one, two = Recording(a, state, monkeypatch), Recording(b, state, monkeypatch)
    step = (lambda i: enter(i, "t1", state)) if state else (lambda i: i.add("acme", "t1"))
    real_create = a.slots.create

    async def after_b(key: str, value: Slot) -> int | None:
        if key.startswith(f"t.acme.{f's.{state}' if state else 'all'}."):
            await two.reached.wait()  # a collides with b's position and takes the next
        return await real_create(key, value)

    with monkeypatch.context() as m:
        for index in (a, b):
            m.setattr(index, "_taken_for", nothing_taken)
        m.setattr(a.slots, "create", after_b)
        first, second = asyncio.create_task(step(a)), asyncio.create_task(step(b))
        await one.reached.wait()
        await two.reached.wait()  # both took a position, about to record it
        one.go.set()
        await first
        real = getattr(b, fails)

        m.setattr(b, fails, leader_killed)
        two.go.set()
        with pytest.raises(TimeoutError):
            await second
        m.setattr(b, fails, real)
    await step(b)  # the redelivery: the task is listed, nothing to do
    await b.repairs.settled()
    ids = ["t1", "t0"] if state is None else ["t1"]
    assert await every_page(a, "acme", state, limit=50) == ids
    assert (await a.page("acme", state=state)).total == len(ids)
    if state:
        assert await live(a, state) == 1 and await live(a, "requested") == 1


async def owing_a_position_in_ready(monkeypatch: pytest.MonkeyPatch
                                    ) -> tuple[ListingIndex, ListingIndex, int]:
    """Writer b enters t1 in ``ready`` and its write recording it is refused while a write
    of the marker that never lands is in flight (the marker still names ``ready`` as being
    entered); reading the winner then fails. b owes its position, with rounds only when
    a test asks for them. (a, b, that position)."""
    monkeypatch.setattr(listing_repair, "ROUND_PAUSES_S", (3600.0,))
    a, b = await two_writers("requested")
    await b.add("acme", "t1")  # b knows its marker: the refusal comes at the step's end
    real = b.markers.compare_and_set

    async def refused(key: str, value: Marker, revision: int) -> int | None:
        return None if value.state == "ready" else await real(key, value, revision)

    with monkeypatch.context() as m:
        m.setattr(b.markers, "compare_and_set", refused)
        m.setattr(b, "_winner", leader_killed)
        with pytest.raises(TimeoutError):
            await enter(b, "t1", "ready")
    [(owed, _)] = b.repairs.owed.values()
    assert await a.slots.get(f"t.acme.s.ready.{owed.p}") == Slot(id="t1")
    return a, b, owed.p


async def test_an_owed_position_a_retry_adopts_is_kept(
        monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, p = await owing_a_position_in_ready(monkeypatch)
    await b.repairs.round()  # the marker still names 'ready': a retry may adopt it
    assert await a.slots.get(f"t.acme.s.ready.{p}") == Slot(id="t1") and b.repairs.owed
    await enter(a, "t1", "ready")  # the redelivery adopts it
    await b.repairs.round()
    marker = await a.markers.get("mt.t1")
    assert isinstance(marker, Marker) and (marker.state, marker.sp) == ("ready", p)
    assert not b.repairs.owed and await every_page(a, "acme", "ready") == ["t1"]
    assert await live(a, "ready") == 1 and await live(a, "requested") == 1
    b.repairs.close()


async def test_an_owed_position_adopted_then_left_is_not_counted_out_twice(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The retry adopted b's position and a later step left it (emptied and counted out)
    before b's round: b finds nothing left to give up, and counts nothing."""
    monkeypatch.setattr(counting, "DROP_AFTER_S", 0.0)
    a, b, _ = await owing_a_position_in_ready(monkeypatch)
    await enter(a, "t1", "ready")  # adopts it
    await enter(a, "t1", "running")  # leaves it
    await asyncio.sleep(0.05)  # a's confirmed tokens dropped (in and out of the position)
    await b.repairs.settled()
    assert await live(a, "ready") == 0 and await live(a, "running") == 1
    assert await every_page(a, "acme", "running") == ["t1"]
    assert await every_page(a, "acme", "ready") == []


async def test_a_position_of_a_failed_step_is_given_up_once_another_writer_records_its_own(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Writer b's step fails after taking its position and counting it (leaving the
    previous state, the leader killed); writer a, which looked before b took it, records
    a position of its own. b's stays listed unless given up."""
    monkeypatch.setattr(listing_repair, "ROUND_PAUSES_S", (3600.0,))
    a, b = await two_writers("requested")
    await b.add("acme", "t1")

    with monkeypatch.context() as m:
        m.setattr(b, "_leave", leader_killed)
        with pytest.raises(TimeoutError):
            await enter(b, "t1", "ready")
        m.setattr(a, "_taken_for", nothing_taken)
        await enter(a, "t1", "ready")
    [(owed, _)] = b.repairs.owed.values()
    assert (owed.state, owed.p) == ("ready", 1)
    await b.repairs.settled()
    assert await every_page(a, "acme", "ready") == ["t1"]
    assert await live(a, "ready") == 1 and await live(a, "requested") == 1


async def test_a_step_recorded_but_unanswered_then_left_is_not_counted_out_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """b's write recording 'ready' lands but its answer is lost (b owes its position, its
    entering never confirmed); a later step elsewhere leaves 'ready' and its tokens are
    dropped. b finds the position emptied by that step: nothing to count."""
    monkeypatch.setattr(counting, "DROP_AFTER_S", 0.0)
    monkeypatch.setattr(listing_repair, "ROUND_PAUSES_S", (3600.0,))
    a, b = await two_writers("requested")
    await b.add("acme", "t1")
    real = b.markers.compare_and_set

    async def landed_unanswered(key: str, value: Marker, revision: int) -> int | None:
        written = await real(key, value, revision)
        if value.state == "ready":
            raise TimeoutError("the answer was lost")
        return written

    with monkeypatch.context() as m:
        m.setattr(b.markers, "compare_and_set", landed_unanswered)
        with pytest.raises(TimeoutError):
            await enter(b, "t1", "ready")
    assert b.repairs.owed
    await enter(a, "t1", "running")
    await asyncio.sleep(0.05)  # a's confirmed tokens dropped
    await b.repairs.settled()
    assert await live(a, "ready") == 0 and await live(a, "running") == 1


async def stray_in_all(emptied_by_a: bool) -> tuple[ListingIndex, ListingIndex]:
    """t0 and t1 listed in all by a; position 3 also holds t1 (a loser's, taken and
    counted in ``n``), given up already by a when ``emptied_by_a``. b owes it."""
    js = FakeJetStream(KV_LISTINGS)
    a = await ListingIndex.open(cast(Any, js), TASKS)
    b = await ListingIndex.open(cast(Any, js), TASKS)
    await a.add("acme", "t0")
    await a.add("acme", "t1")
    await b.slots.create("t.acme.all.3", Slot(id="t1"))
    await b.counts.raise_to("t.acme.all.n", 3)
    if emptied_by_a:  # as a loser that gave it up does: its token confirmed, then dropped
        a._confirm([await a._leave("t.acme.all", "t1", 3)])
        await asyncio.sleep(0.05)
    return a, b


async def test_an_owed_position_in_all_emptied_before_its_count_failed_is_counted_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listing_repair, "ROUND_PAUSES_S", (3600.0,))
    a, b = await stray_in_all(emptied_by_a=False)
    b.repairs.owe([listing_repair.Owed("t.acme.all", "t1", "all", 3)])
    real, calls = b.counts.bump, []

    async def away_once(*args: Any) -> Any:
        calls.append(args)
        if len(calls) == 1:
            raise TimeoutError("the bucket went away after the slot was emptied")
        return await real(*args)

    monkeypatch.setattr(b.counts, "bump", away_once)
    await b.repairs.round()
    await b.repairs.round()
    assert not b.repairs.owed and len(calls) == 2
    assert await every_page(a, "acme", limit=50) == ["t1", "t0"]
    assert (await a.page("acme")).total == 2
    b.repairs.close()


async def test_an_owed_position_in_all_another_writer_gave_up_is_not_counted_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listing_repair, "ROUND_PAUSES_S", (3600.0,))
    monkeypatch.setattr(counting, "DROP_AFTER_S", 0.0)
    a, b = await stray_in_all(emptied_by_a=True)
    assert (await a.page("acme")).total == 2
    b.repairs.owe([listing_repair.Owed("t.acme.all", "t1", "all", 3)])
    await b.repairs.settled()
    assert (await a.page("acme")).total == 2


async def test_taking_back_a_change_is_undone_by_its_opposite() -> None:
    """``take_back`` undoes a change still remembered, unless its opposite is remembered
    too (counted out already: the give-up's write landed, its answer lost)."""
    index = await ListingIndex.open(cast(Any, FakeJetStream(KV_LISTINGS)), TASKS)
    counts, key = index.counts, "t.acme.s.ready.live"
    for p in (1, 2):
        assert await counts.bump(key, f"in:t{p}:{p}", +1)
    assert await counts.bump(key, "out:t2:2", -1)
    assert await counts.take_back(key, "in:t1:1", +1, unless="out:t1:1")
    assert not await counts.take_back(key, "in:t2:2", +1, unless="out:t2:2")
    assert not await counts.take_back(key, "in:t1:1", +1, unless="out:t1:1")  # forgotten
    counter = await index.counters.get(key)
    assert counter is not None and counter.n == 0


async def test_an_owed_position_adopted_while_it_is_emptied_is_put_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """b owes a position in 'ready' (taken, its count never raised). Between b's read of
    the marker and its emptying the slot, writer c names 'ready' and fails, and a's retry
    adopts b's position by looking back (a is about to record it). b reads again once it
    has emptied the slot, sees the list being entered and puts the position back."""
    monkeypatch.setattr(listing_repair, "ROUND_PAUSES_S", (3600.0,))
    js = FakeJetStream(KV_LISTINGS)
    a, b, c = [await ListingIndex.open(cast(Any, js), TASKS) for _ in range(3)]
    await enter(b, "t0", "requested")
    await enter(a, "t1", "requested")
    await b.slots.create("t.acme.s.ready.1", Slot(id="t1"))
    b.repairs.owe([listing_repair.Owed("t.acme.s.ready", "t1", "ready", 1)])
    one = Recording(a, "ready", monkeypatch)
    real_read = b.winners.get_entry
    recording: list[asyncio.Task[None]] = []

    async def c_fails_then_a_adopts(*args: Any) -> Any:
        first = await real_read(*args)
        if not recording:
            with monkeypatch.context() as m:
                m.setattr(c, "_allocate", leader_killed)
                with pytest.raises(TimeoutError):
                    await enter(c, "t1", "ready")  # 'ready' named, nothing taken
            recording.append(asyncio.create_task(enter(a, "t1", "ready")))
            await one.reached.wait()  # a adopted position 1, about to record it
        return first

    monkeypatch.setattr(b.winners, "get_entry", c_fails_then_a_adopts)
    await b.repairs.round()
    assert await b.slots.get("t.acme.s.ready.1") == Slot(id="t1") and b.repairs.owed
    one.go.set()
    await recording[0]
    await b.repairs.round()
    marker = await a.markers.get("mt.t1")
    assert isinstance(marker, Marker) and (marker.state, marker.sp) == ("ready", 1)
    assert not b.repairs.owed and await every_page(a, "acme", "ready") == ["t1"]
    assert await live(a, "ready") == 1
    b.repairs.close()
