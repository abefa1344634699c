"""Concurrent changes of one key folded into one write (infra/kv/coalesce.py)."""

from __future__ import annotations

import asyncio

import pytest

from infra.kv.coalesce import Change, Coalescer, WriterGone, compose


class Store:
    """One value per key; each write takes a turn of the loop (a round trip)."""

    def __init__(self, fail: int = 0) -> None:
        self.values: dict[str, int] = {}
        self.writes: list[str] = []
        self.fail = fail
        self.gate: asyncio.Event | None = None

    async def write(self, key: str, change: Change[int]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(0)
        if self.fail:
            self.fail -= 1
            raise ConnectionError("bucket down")
        new = change(self.values.get(key))
        if new is not None:
            self.values[key] = new
            self.writes.append(key)


def add(n: int) -> Change[int]:
    return lambda v: (v or 0) + n


def test_compose_applies_in_order_and_writes_nothing_when_none_does() -> None:
    raise_to_5: Change[int] = lambda v: None if (v or 0) >= 5 else 5  # noqa: E731
    assert compose([add(1), raise_to_5, add(2)])(0) == 7
    assert compose([raise_to_5])(6) is None
    assert compose([raise_to_5, raise_to_5])(1) == 5


async def test_changes_queued_behind_a_write_go_out_as_one() -> None:
    store = Store()
    co: Coalescer[int] = Coalescer(store.write)
    await asyncio.gather(*(co.apply("n", add(1)) for _ in range(50)),
                         co.apply("other", add(7)))
    assert store.values == {"n": 50, "other": 7}
    assert store.writes.count("n") == 2  # the first caller's own, then the 49 behind it
    await co.apply("n", add(1))  # nothing queued any more: a write of its own
    assert store.values["n"] == 51 and store.writes.count("n") == 3


async def test_a_failed_write_fails_every_change_it_carried_and_no_other() -> None:
    store = Store(fail=1)
    co: Coalescer[int] = Coalescer(store.write)
    results = await asyncio.gather(*(co.apply("n", add(1)) for _ in range(5)),
                                   return_exceptions=True)
    assert isinstance(results[0], ConnectionError)  # the first write, alone, failed
    assert results[1:] == [None] * 4 and store.values == {"n": 4}


async def test_a_cancelled_writer_hands_the_queue_to_the_next_caller() -> None:
    store = Store()
    store.gate = asyncio.Event()
    co: Coalescer[int] = Coalescer(store.write)
    writer = asyncio.create_task(co.apply("n", add(1)))
    await asyncio.sleep(0)
    queued = [asyncio.create_task(co.apply("n", add(1))) for _ in range(3)]
    gone = asyncio.create_task(co.apply("n", add(100)))
    await asyncio.sleep(0)
    writer.cancel()
    gone.cancel()  # a queued caller that stops waiting: its change is not written
    with pytest.raises(asyncio.CancelledError):
        await writer
    store.gate.set()
    await asyncio.wait_for(asyncio.gather(*queued), 5)  # the next one wrote for the three
    assert store.values == {"n": 3} and store.writes == ["n"]
    await co.apply("n", add(10))  # the key is free again
    assert store.values == {"n": 13}


async def test_the_write_that_carried_a_cancelled_writer_fails_its_batch() -> None:
    store = Store()
    store.gate = asyncio.Event()  # every write blocks
    co: Coalescer[int] = Coalescer(store.write)
    first = asyncio.create_task(co.apply("n", add(1)))
    await asyncio.sleep(0)
    queued = [asyncio.create_task(co.apply("n", add(1))) for _ in range(3)]
    await asyncio.sleep(0)
    first.cancel()  # its write carried its own change only: the queue passes on
    await asyncio.sleep(0.01)
    queued[0].cancel()  # now writing for all three
    for task in queued[1:]:
        with pytest.raises(WriterGone):
            await asyncio.wait_for(task, 5)
    assert first.cancelled() and store.values == {}
    assert store.writes == []


async def test_a_caller_cancelled_as_its_turn_came_passes_the_turn_on() -> None:
    store = Store()
    co: Coalescer[int] = Coalescer(store.write)
    first = asyncio.create_task(co.apply("n", add(1)))
    await asyncio.sleep(0)
    queued = [asyncio.create_task(co.apply("n", add(1))) for _ in range(3)]
    await first  # its hand-off has woken queued[0], which has not run yet
    queued[0].cancel()
    await asyncio.wait_for(asyncio.gather(*queued[1:]), 5)
    assert store.values == {"n": 3}
