"""What a lists writer owes (infra/kv/listing_repair.py): bounded, retried, dropped late."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from prometheus_client import REGISTRY

from infra.kv import listing_repair
from infra.kv.listing_repair import Owed, Repairs


def metric(name: str, reason: str | None = None) -> float:
    """A sample of this process's registry (the tests compare before and after)."""
    labels = {"reason": reason} if reason else None
    return REGISTRY.get_sample_value(name, labels) or 0.0


def left(reason: str) -> float:
    return metric("radtrain_listing_positions_left_total", reason)


OWED = "radtrain_listing_owed_positions"


@pytest.fixture(autouse=True)
def quick_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listing_repair, "ROUND_PAUSES_S", (0.0,))


async def test_positions_are_retried_until_settled_and_kept_while_in_flight() -> None:
    calls: list[int] = []
    answers = {1: [TimeoutError("leader away"), True], 2: [False, False, True]}

    async def settle(owed: Owed) -> bool:
        calls.append(owed.p)
        answer = answers[owed.p].pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    repairs = Repairs(settle)
    repairs.owe([Owed("t.acme.all", "t1", "all", 1), Owed("t.acme.s.ready", "t1", "ready", 2)])
    await repairs.settled()
    assert repairs.owed == {} and calls.count(1) == 2 and calls.count(2) == 3


async def test_what_is_owed_is_bounded_oldest_first_and_dropped_after_its_ttl() -> None:
    now = [0.0]

    async def never(owed: Owed) -> bool:
        now[0] += 100.0
        return False

    repairs = Repairs(never, clock=lambda: now[0], limit=2)
    owed, by_limit, by_ttl = metric(OWED), left("limit"), left("ttl")
    repairs.owe([Owed("t.acme.all", f"t{p}", "all", p) for p in (1, 2, 3)])
    assert [owed.p for owed, _ in repairs.owed.values()] == [2, 3]  # the oldest dropped
    assert (metric(OWED) - owed, left("limit") - by_limit) == (2, 1)
    await repairs.settled()  # each still in flight: dropped once past the TTL
    assert repairs.owed == {} and now[0] > listing_repair.OWED_TTL_S
    assert (metric(OWED), left("ttl") - by_ttl) == (owed, 2)


async def test_settled_runs_a_round_at_once_and_close_stops_what_is_left(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(listing_repair, "ROUND_PAUSES_S", (0.01, 3600.0))
    calls: list[int] = []

    async def bucket_away_then_back(owed: Owed) -> bool:
        calls.append(owed.p)
        if len(calls) == 1:
            raise TimeoutError("no answer")  # the round ends here: p=2 waits for the next
        return owed.p == 1

    repairs = Repairs(bucket_away_then_back)
    owed, at_shutdown = metric(OWED), left("shutdown")
    repairs.owe([Owed("t.acme.all", "t1", "all", 1), Owed("t.acme.all", "t2", "all", 2)])
    with pytest.raises(TimeoutError):  # a shutdown's bounded wait: p=2 is never settled
        await asyncio.wait_for(repairs.settled(), 0.5)
    assert calls[:3] == [1, 1, 2] and list(repairs.owed) == [("t.acme.all", 2)]
    task = repairs._task
    repairs.close()
    assert task is not None
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.cancelled()
    assert "1 positions not given up at shutdown" in caplog.text
    assert (metric(OWED), left("shutdown") - at_shutdown) == (owed, 1)


async def test_a_position_owed_twice_keeps_its_age_and_what_its_give_up_had_begun() -> None:
    now = [5.0]

    async def later(owed: Owed) -> bool:
        return False

    repairs = Repairs(later, clock=lambda: now[0])
    repairs.owe([Owed("t.acme.all", "t1", "all", 3, touched=True)])  # its give-up failed
    now[0] = 9.0
    repairs.owe([Owed("t.acme.all", "t1", "all", 3)])  # then its step
    assert repairs.owed[("t.acme.all", 3)] == (Owed("t.acme.all", "t1", "all", 3, True), 5.0)
    repairs.close()
