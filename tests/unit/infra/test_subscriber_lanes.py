"""Batches settle lane by lane (DESIGN.md §12): one task's events in stream order, tasks
side by side; reads shared only with handlers whose messages came first."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from infra.bus.consumer import RetryPlan
from infra.bus.subscriber import (
    Delivery,
    SharedReads,
    Subscriber,
    one_lane,
    settle_batch,
)
from tests.support.fake_bus import FakeJetStream, FakeMsg

PLAN = RetryPlan(stream="TASKS", consumer="projector", max_deliver=3)
A, B = "a" * 32, "b" * 32


class Gate:
    """A handler that records starts and ends and holds each message until released."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.release = asyncio.Event()

    async def __call__(self, raw: Any, delivery: Delivery) -> list[Any]:
        self.log.append(f"start {delivery.subject}")
        await self.release.wait()
        self.log.append(f"end {delivery.subject}")
        return []


def _msgs(*subjects: str) -> list[FakeMsg]:
    return [FakeMsg(s, b"{}", seq=i) for i, s in enumerate(subjects, 1)]


async def _settle(sub: Subscriber[Any], gate: Gate, msgs: list[FakeMsg]) -> None:
    batch = asyncio.ensure_future(settle_batch(
        FakeJetStream().as_js(), sub, [m.as_msg() for m in msgs], PLAN, 0.0))
    for _ in range(5):
        await asyncio.sleep(0)
    gate.log.append("released")
    gate.release.set()
    await batch
    assert all(m.outcome == ("ack", None) for m in msgs)


async def test_one_task_in_order_tasks_side_by_side() -> None:
    gate = Gate()
    sub = Subscriber("projector", lambda raw: raw, gate)
    await _settle(sub, gate, _msgs(f"tasks.requested.{A}", f"tasks.requested.{B}",
                                   f"tasks.rejected.{A}"))
    # both tasks started before anything ended; A's second event only after its first
    assert gate.log[:3] == [f"start tasks.requested.{A}", f"start tasks.requested.{B}",
                            "released"]
    assert gate.log.index(f"start tasks.rejected.{A}") > gate.log.index(
        f"end tasks.requested.{A}")


@pytest.mark.parametrize("lane,subjects", [
    (one_lane, (f"tasks.requested.{A}", f"tasks.requested.{B}")),
    (None, ("webhooks.jobs.t.w1", "webhooks.jobs.t.w2")),  # no task: one lane
])
async def test_one_lane_is_sequential(lane: Any, subjects: tuple[str, str]) -> None:
    gate = Gate()
    sub = Subscriber("x", lambda raw: raw, gate, **({"lane": lane} if lane else {}))
    await _settle(sub, gate, _msgs(*subjects))
    assert gate.log.index(f"start {subjects[1]}") > gate.log.index(f"end {subjects[0]}")


async def test_concurrent_settles_one_task_side_by_side() -> None:
    gate = Gate()
    sub = Subscriber("webhook-deliveries", lambda raw: raw, gate, concurrent=True)
    await _settle(sub, gate, _msgs(f"tasks.requested.{A}", f"tasks.rejected.{A}"))
    assert gate.log[:3] == [f"start tasks.requested.{A}", f"start tasks.rejected.{A}",
                            "released"]


def _delivery(fetched_at: float) -> Delivery:
    return Delivery(subject="s", attempt=1, plan=PLAN, msg=cast(Any, None),
                    fetched_at=fetched_at)


async def test_shared_reads_join_only_reads_started_after_the_fetch() -> None:
    reads: list[str] = []
    release = asyncio.Event()

    async def read(key: str) -> str:
        reads.append(key)
        n = len(reads)
        await release.wait()
        return f"{key}@{n}"

    shared: SharedReads[str, str] = SharedReads(read)
    early = _delivery(0.0)
    first = asyncio.ensure_future(shared.get("ds", early))
    joined = asyncio.ensure_future(shared.get("ds", early))
    await asyncio.sleep(0)
    later = asyncio.ensure_future(shared.get("ds", _delivery(float("inf"))))  # fetched after
    await asyncio.sleep(0)
    release.set()
    assert await first == await joined == "ds@1"  # one read for the two
    assert await later == "ds@2"  # its own read: the first began before it was fetched
    assert await shared.get("ds", early) == "ds@3"  # nothing kept once a read lands
    assert reads == ["ds", "ds", "ds"]


async def test_shared_read_failure_reaches_every_joiner() -> None:
    async def read(key: str) -> str:
        await asyncio.sleep(0)
        raise TimeoutError(key)

    shared: SharedReads[str, str] = SharedReads(read)
    results = await asyncio.gather(shared.get("ds", _delivery(0.0)),
                                   shared.get("ds", _delivery(0.0)), return_exceptions=True)
    assert all(isinstance(r, TimeoutError) for r in results)
    with pytest.raises(TimeoutError):
        await shared.get("ds", _delivery(0.0))
