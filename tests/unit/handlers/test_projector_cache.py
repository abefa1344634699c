"""The projector's glue: a cached record saves reads, and is never trusted over KV."""

from __future__ import annotations

from typing import Any, cast

import pytest

from handlers.projector import RecordCache, fold, handle_event
from infra.bus.topology import KV_TASKS
from infra.errors import TransientError
from infra.kv import TaskRepo
from schemas.common import ErrorDetail
from schemas.events import TaskRejected, TaskRejectedEvent, TaskRequestedEvent
from tests.support.factories import request
from tests.support.fake_kv import FakeJetStream, FakeKeyValue

DELIVERY = cast(Any, None)


def requested() -> TaskRequestedEvent:
    return TaskRequestedEvent(source="g", subject="t1", data=request())


def rejected() -> TaskRejectedEvent:
    return TaskRejectedEvent(source="h", subject="t1", data=TaskRejected(
        task_id="t1", tenant="default",
        errors=[ErrorDetail(field="dataset_id", code="not_found", message="no such dataset")]))


class CountingKV(FakeKeyValue):
    def __init__(self) -> None:
        super().__init__(KV_TASKS)
        self.reads = 0

    async def get(self, key: str, revision: int | None = None,
                  validate_keys: bool = True) -> Any:
        self.reads += 1
        return await super().get(key, revision, validate_keys)


async def _repo() -> tuple[TaskRepo, CountingKV]:
    js = FakeJetStream(KV_TASKS)
    kv = js.buckets[KV_TASKS] = CountingKV()
    return await TaskRepo.open(cast(Any, js)), kv


async def test_requested_then_rejected_costs_no_read() -> None:
    tasks, kv = await _repo()
    cache = RecordCache()
    await handle_event(requested(), DELIVERY, tasks=tasks, cache=cache)
    await handle_event(rejected(), DELIVERY, tasks=tasks, cache=cache)
    found = await tasks.get("t1")
    assert found is not None and found[0].state == "rejected"
    assert kv.reads == 1  # only the check above: the writes went by compare-and-set


async def test_a_stale_cached_record_loses_its_write_and_is_read_again() -> None:
    tasks, kv = await _repo()
    cache, other = RecordCache(), RecordCache()  # two projector processes
    await fold(tasks, "t1", requested(), cache)
    await fold(tasks, "t1", rejected(), other)  # the other one moved the record on
    assert await fold(tasks, "t1", rejected(), cache) is None  # a duplicate, seen in KV
    assert kv.conflicts == 1 and kv.reads == 2  # other's first read, then ours after losing
    found = await tasks.get("t1")
    assert found is not None and found[0].state == "rejected"


async def test_a_cached_record_that_writes_nothing_is_checked_in_kv() -> None:
    tasks, kv = await _repo()
    cache = RecordCache()
    await fold(tasks, "t1", requested(), cache)
    await fold(tasks, "t1", rejected(), cache)
    reads = kv.reads
    assert await fold(tasks, "t1", rejected(), cache) is None
    assert kv.reads == reads + 1


async def test_requested_for_an_existing_record_reads_it() -> None:
    tasks, kv = await _repo()
    await fold(tasks, "t1", requested(), RecordCache())
    assert await fold(tasks, "t1", requested(), RecordCache()) is None  # a redelivery
    assert kv.conflicts == 1 and kv.reads == 1


async def test_an_event_without_a_record_still_waits() -> None:
    tasks, _ = await _repo()
    with pytest.raises(TransientError, match="no record yet") as err:
        await handle_event(rejected(), DELIVERY, tasks=tasks, cache=RecordCache())
    # The wait for the task.requested follows the projector's growing schedule, the
    # same budget as the task.requested's own retries (a fixed 2 s spent all ten
    # deliveries within one leader election and dead-lettered the task.rejected).
    assert err.value.delay_s is None


def test_cache_is_bounded() -> None:
    tasks_cache = RecordCache(size=2)
    rec = cast(Any, object())
    for key in ("a", "b", "c"):
        tasks_cache.put(key, rec, 1)
    assert tasks_cache.get("a") is None and tasks_cache.get("c") == (rec, 1)
