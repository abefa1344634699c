"""The pure part of fair webhook delivery: the circuit breaker and the fair queue."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from handlers.delivery_pool import job_route
from handlers.webhook_fairness import BreakerPolicy, FairQueue, admit, claim_probe, record
from schemas.webhooks import EndpointBreaker

T0 = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = BreakerPolicy(failures=3, period_s=10.0, cooldown_s=30.0, probe_timeout_s=20.0)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_breaker_opens_only_after_failures_for_a_period() -> None:
    b = None
    for t in (0, 1, 2, 3):  # four failures in 3 s: enough failures, not long enough
        b = record(b, False, at(t), POLICY, "HTTP 500")
    assert b is not None and b.state == "closed" and b.failures == 4
    assert admit(b, at(4), POLICY).gate == "send"
    b = record(b, False, at(11), POLICY, "timeout")
    assert b.state == "open" and b.since == at(11) and b.probe_at == at(41)
    assert b.failing_since == at(0) and b.last_error == "timeout"
    gate = admit(b, at(21), POLICY)
    assert gate.gate == "wait" and gate.wait_s == 20.0


def test_success_resets_a_closed_breaker() -> None:
    b = record(record(None, False, at(0), POLICY), False, at(5), POLICY)
    b = record(b, True, at(6), POLICY)
    assert b == EndpointBreaker()
    b = record(b, False, at(20), POLICY)
    assert b.failures == 1 and b.failing_since == at(20)  # a new failing period


def test_probe_is_claimed_once_and_its_outcome_decides() -> None:
    b = EndpointBreaker(state="open", since=at(0), failures=5, failing_since=at(-60),
                        probe_at=at(30))
    assert claim_probe(b, at(29), POLICY) is None  # not due
    assert admit(b, at(30), POLICY).gate == "probe"
    probing = claim_probe(b, at(30), POLICY)
    assert probing is not None and probing.state == "half_open" and probing.since == at(30)
    assert claim_probe(probing, at(31), POLICY) is None  # someone else holds the probe
    assert admit(probing, at(31), POLICY).gate == "wait"
    assert admit(probing, at(51), POLICY).gate == "probe"  # the prober vanished
    closed = record(probing, True, at(32), POLICY)
    assert closed.state == "closed" and closed.failures == 0 and closed.since == at(32)
    reopened = record(probing, False, at(32), POLICY, "HTTP 503")
    assert reopened.state == "open" and reopened.probe_at == at(62) and reopened.failures == 6


def test_fair_queue_caps_tenant_and_endpoint_and_takes_turns() -> None:
    q: FairQueue[str] = FairQueue(workers=4, per_tenant=2, per_endpoint=1, queue_per_tenant=10)
    for i in range(6):
        assert q.push("a", f"a.hook{i % 3}", f"a{i}", 0.0)
    assert q.push("b", "b.hook", "b0", 0.0) and q.push("b", "b.hook", "b1", 0.0)
    started = []
    while (job := q.pop()) is not None:
        started.append(job)
    # a: two (its cap), on two endpoints; b: one (its endpoint's cap); workers: 3 of 4
    assert [item for _, _, item in started] == ["a0", "b0", "a1"]
    assert q.running == 3 and q.running_of("a") == 2 and q.queued == 5
    q.release("b", "b.hook")
    assert q.pop() == ("b", "b.hook", "b1")
    q.release("a", "a.hook0")
    assert q.pop() == ("a", "a.hook2", "a2")  # a.hook0's and a.hook1's next wait: a0/a1 ran
    assert q.pop() is None  # four running: every worker busy


def test_a_tenant_with_a_full_queue_is_refused_and_deferred_longer() -> None:
    q: FairQueue[int] = FairQueue(workers=8, per_tenant=1, per_endpoint=1, queue_per_tenant=2)
    assert q.push("a", "a.x", 1, 0.0) and q.push("a", "a.x", 2, 0.0)
    assert not q.push("a", "a.x", 3, 0.0)
    assert q.push("b", "b.x", 1, 0.0)  # another tenant still gets in
    delays = [q.deferral("a", 1.0, base_s=1.0) for _ in range(6)]
    assert delays == [1.0, 1.0, 2.0, 2.0, 3.0, 3.0]
    assert q.deferral("a", 100.0, base_s=1.0) == 1.0  # a new window


def test_expired_and_drained_jobs_leave_the_queue() -> None:
    q: FairQueue[str] = FairQueue(workers=1, per_tenant=1, per_endpoint=1, queue_per_tenant=5)
    q.push("a", "a.x", "old", 0.0)
    q.push("a", "a.x", "new", 4.0)
    assert q.pop() == ("a", "a.x", "old")
    assert q.expired(6.0, 5.0) == []
    assert q.expired(10.0, 5.0) == ["new"]
    q.push("b", "b.x", "b", 10.0)
    assert q.drain() == ["b"] and q.queued == 0
    q.release("a", "a.x")
    assert q.running == 0 and q.pop() is None


def test_job_subjects_name_tenant_and_endpoint() -> None:
    assert job_route("webhooks.jobs.acme.wh1") == ("acme", "acme.wh1")
    assert job_route("webhooks.other") == ("", "webhooks.other")
