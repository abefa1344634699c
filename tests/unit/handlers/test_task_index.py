"""The task-index handler: converge the lists to the projector's record, or wait for it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from handlers.projector import RecordCache, project
from handlers.projector import handle_event as project_event
from handlers.task_index import handle_event, reflects
from infra.bus.topology import KV_LISTINGS, KV_TASKS
from infra.errors import TransientError
from infra.kv import TaskRepo
from infra.kv.listing import TASKS, ListingIndex
from schemas.events import (
    TaskRedriven,
    TaskRedrivenEvent,
    TaskRequestedEvent,
    TaskStarted,
    TaskStartedEvent,
)
from tests.support.factories import request
from tests.support.fake_kv import FakeJetStream

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def requested(task_id: str = "t1") -> TaskRequestedEvent:
    return TaskRequestedEvent(source="g", subject=task_id, time=T0,
                              data=request().model_copy(update={"task_id": task_id}))


def started(task_id: str = "t1") -> TaskStartedEvent:
    return TaskStartedEvent(source="r", subject=task_id, time=T0, data=TaskStarted(
        task_id=task_id, runner_id="r1", attempt=1))


def test_reflects_compares_generation_then_state() -> None:
    rec = project(None, requested())
    assert rec is not None
    assert reflects(rec, requested()) and not reflects(rec, started())
    running = rec.model_copy(update={"state": "running"})
    assert reflects(running, requested()) and reflects(running, started())
    redrive = TaskRedrivenEvent(source="o", subject="t1", time=T0, taskgeneration=2,
                                data=TaskRedriven(task_id="t1", to_state="ready", by="oncall"))
    assert not reflects(running, redrive)
    assert reflects(running.model_copy(update={"generation": 2, "state": "ready"}), redrive)


async def test_handler_lists_the_record_state_and_waits_for_a_record_behind() -> None:
    js = cast(Any, FakeJetStream(KV_TASKS, KV_LISTINGS))
    tasks, index = await TaskRepo.open(js), await ListingIndex.open(js, TASKS)
    delivery = cast(Any, None)
    with pytest.raises(TransientError) as err:  # no record yet: the projector comes first
        await handle_event(requested(), delivery, tasks=tasks, index=index, wait_s=0.1)
    assert err.value.delay_s is None  # the consumer's schedule: the projector's budget
    tenant = request().tenant
    assert (await index.page(tenant)).ids == ["t1"]  # listed at once, in no state yet
    assert (await index.page(tenant, state="requested")).ids == []
    await tasks.upsert("t1", lambda rec: project(rec, requested()))
    await handle_event(requested(), delivery, tasks=tasks, index=index)
    with pytest.raises(TransientError):  # the record does not show it yet
        await handle_event(started(), delivery, tasks=tasks, index=index, wait_s=0.1)
    assert (await index.page(tenant, state="requested")).ids == ["t1"]
    late = asyncio.create_task(handle_event(started(), delivery, tasks=tasks, index=index))
    await asyncio.sleep(0.1)  # the projector writes while the handler waits for it
    await tasks.upsert("t1", lambda rec: project(rec, started()))
    await late
    await handle_event(requested(), delivery, tasks=tasks, index=index)  # a late replay
    assert (await index.page(tenant, state="running")).ids == ["t1"]
    assert (await index.page(tenant, state="requested")).total == 0
    assert (await index.page(tenant)).ids == ["t1"]


async def test_an_event_the_lists_already_show_reads_nothing() -> None:
    """The index behind the projector lists a task straight in the record's later state;
    that state's own event then needs no record read (nor any other round trip)."""
    js = cast(Any, FakeJetStream(KV_TASKS, KV_LISTINGS))
    tasks, index = await TaskRepo.open(js), await ListingIndex.open(js, TASKS)
    delivery = cast(Any, None)
    await tasks.upsert("t1", lambda rec: project(rec, requested()))
    await tasks.upsert("t1", lambda rec: project(rec, started()))
    await handle_event(requested(), delivery, tasks=tasks, index=index)
    assert (await index.page(request().tenant, state="running")).ids == ["t1"]
    reads: list[str] = []
    real_get = tasks.get

    async def counted(task_id: str) -> Any:
        reads.append(task_id)
        return await real_get(task_id)

    tasks.get = counted  # type: ignore[method-assign]
    await handle_event(started(), delivery, tasks=tasks, index=index)
    await handle_event(requested(), delivery, tasks=tasks, index=index)  # a late replay
    assert reads == []
    redrive = TaskRedrivenEvent(source="o", subject="t1", time=T0, taskgeneration=2,
                                data=TaskRedriven(task_id="t1", to_state="ready", by="oncall"))
    with pytest.raises(TransientError):  # a newer generation is read: not projected yet
        await handle_event(redrive, delivery, tasks=tasks, index=index, wait_s=0.1)
    assert reads and set(reads) == {"t1"}


async def test_the_projectors_last_write_saves_the_record_read() -> None:
    js = cast(Any, FakeJetStream(KV_TASKS, KV_LISTINGS))
    tasks, index = await TaskRepo.open(js), await ListingIndex.open(js, TASKS)
    records = RecordCache()
    await project_event(requested(), cast(Any, None), tasks=tasks, cache=records)
    reads: list[str] = []
    real_get = tasks.get

    async def counted(task_id: str) -> Any:
        reads.append(task_id)
        return await real_get(task_id)

    tasks.get = counted  # type: ignore[method-assign]
    await handle_event(requested(), cast(Any, None), tasks=tasks, index=index, records=records)
    assert reads == [] and (await index.page(request().tenant, state="requested")).ids == ["t1"]
    with pytest.raises(TransientError):  # the cached record does not show it: read, wait
        await handle_event(started(), cast(Any, None), tasks=tasks, index=index, wait_s=0.1,
                           records=records)
    assert reads and set(reads) == {"t1"}
