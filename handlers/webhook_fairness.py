"""Fair webhook delivery, the pure part: the circuit breaker and the fair scheduler.

No I/O here. The breaker's state lives in KV ``webhook_breakers`` (written by
``handlers/deliverer.py``, shown by ``GET /v1/webhooks``); the scheduler is
the in-process queue of ``handlers/delivery_pool.py``.

Breaker (per subscription): ``closed`` until the endpoint has failed
``failures`` times in a row *and* for at least ``period_s``; then ``open``:
no attempt is made (jobs are put back with a delay, their retry count
untouched) until ``probe_at``; then one job claims the probe (``half_open``);
its success closes the circuit, its failure opens it again for ``cooldown_s``.

Scheduler: jobs wait in one queue per tenant, served round-robin; a job starts
only while the process runs fewer than ``workers`` attempts, its tenant fewer
than ``per_tenant`` and its endpoint fewer than ``per_endpoint``. A tenant
whose endpoints are slow holds at most its share; the others' jobs start at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Generic, Literal, TypeVar

from schemas.webhooks import EndpointBreaker

T = TypeVar("T")
Gate = Literal["send", "probe", "wait"]


@dataclass(frozen=True)
class BreakerPolicy:
    failures: int = 5
    period_s: float = 60.0
    cooldown_s: float = 60.0
    probe_timeout_s: float = 60.0
    """A half-open circuit whose probe never reported (its process died) lets another
    probe go after this long."""


@dataclass(frozen=True)
class Admission:
    gate: Gate
    wait_s: float = 0.0
    """``wait``: how long until a probe may go."""


def admit(breaker: EndpointBreaker | None, now: datetime, policy: BreakerPolicy) -> Admission:
    """May an attempt go out now? ``probe`` must be claimed (:func:`claim_probe`) first."""
    if breaker is None or breaker.state == "closed":
        return Admission("send")
    if breaker.state == "open":
        due = breaker.probe_at or now
        if now >= due:
            return Admission("probe")
        return Admission("wait", (due - now).total_seconds())
    since = breaker.since or now
    lost_at = since + timedelta(seconds=policy.probe_timeout_s)
    if now >= lost_at:
        return Admission("probe")
    return Admission("wait", max(0.5, min(policy.cooldown_s, (lost_at - now).total_seconds())))


def claim_probe(breaker: EndpointBreaker | None, now: datetime,
                policy: BreakerPolicy) -> EndpointBreaker | None:
    """The half-open state this caller writes to own the probe; ``None`` if not due
    (another job claimed it first, or the circuit closed meanwhile)."""
    if breaker is None or admit(breaker, now, policy).gate != "probe":
        return None
    return breaker.model_copy(update={"state": "half_open", "since": now})


def record(breaker: EndpointBreaker | None, ok: bool, now: datetime, policy: BreakerPolicy,
           error: str | None = None) -> EndpointBreaker:
    """The state after one attempt's outcome."""
    current = breaker or EndpointBreaker()
    if ok:
        if current.state == "closed" and current.failures == 0:
            return current
        return EndpointBreaker(state="closed", since=now if current.state != "closed"
                               else current.since)
    failures = current.failures + 1
    failing_since = current.failing_since or now
    update = {"failures": failures, "failing_since": failing_since, "last_error": error}
    reopen = current.state == "half_open" or current.state == "open"
    tripped = (failures >= policy.failures
               and (now - failing_since).total_seconds() >= policy.period_s)
    if reopen or (current.state == "closed" and tripped):
        update |= {"state": "open", "since": now,
                   "probe_at": now + timedelta(seconds=policy.cooldown_s)}
    return current.model_copy(update=update)


def changed(before: EndpointBreaker | None, after: EndpointBreaker) -> bool:
    return (before or EndpointBreaker()) != after


# --- the fair scheduler ---------------------------------------------------------------


@dataclass
class _Waiting(Generic[T]):
    endpoint: Hashable
    item: T
    queued_at: float


@dataclass
class FairQueue(Generic[T]):
    """Per-tenant queues served round-robin under three concurrency caps."""

    workers: int
    per_tenant: int
    per_endpoint: int
    queue_per_tenant: int
    _queues: dict[str, deque[_Waiting[T]]] = field(default_factory=dict)
    _order: deque[str] = field(default_factory=deque)
    _by_tenant: dict[str, int] = field(default_factory=dict)
    _by_endpoint: dict[Hashable, int] = field(default_factory=dict)
    _deferred: dict[str, tuple[float, int]] = field(default_factory=dict)
    running: int = 0

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def push(self, tenant: str, endpoint: Hashable, item: T, now: float) -> bool:
        """Queue ``item``; ``False`` when its tenant already has ``queue_per_tenant``
        waiting (the caller defers it to the stream)."""
        queue = self._queues.get(tenant)
        if queue is None:
            queue = self._queues[tenant] = deque()
            self._order.append(tenant)
        if len(queue) >= self.queue_per_tenant:
            return False
        queue.append(_Waiting(endpoint, item, now))
        return True

    def pop(self) -> tuple[str, Hashable, T] | None:
        """The next job that may start, taking turns between tenants; it counts as
        running until :meth:`release`."""
        if self.running >= self.workers:
            return None
        for _ in range(len(self._order)):
            tenant = self._order[0]
            self._order.rotate(-1)
            if self._by_tenant.get(tenant, 0) >= self.per_tenant:
                continue
            queue = self._queues[tenant]
            for index, waiting in enumerate(queue):
                if self._by_endpoint.get(waiting.endpoint, 0) < self.per_endpoint:
                    del queue[index]
                    self._start(tenant, waiting.endpoint)
                    self._forget_if_idle(tenant)
                    return tenant, waiting.endpoint, waiting.item
        return None

    def release(self, tenant: str, endpoint: Hashable) -> None:
        self.running -= 1
        self._by_tenant[tenant] -= 1
        self._by_endpoint[endpoint] -= 1
        if not self._by_endpoint[endpoint]:
            del self._by_endpoint[endpoint]
        if not self._by_tenant[tenant]:
            del self._by_tenant[tenant]
        self._forget_if_idle(tenant)

    def expired(self, now: float, hold_s: float) -> list[T]:
        """Jobs that waited longer than ``hold_s``, removed (they go back to the stream)."""
        out: list[T] = []
        for tenant in list(self._queues):
            queue = self._queues[tenant]
            keep = deque(w for w in queue if now - w.queued_at <= hold_s)
            out.extend(w.item for w in queue if now - w.queued_at > hold_s)
            self._queues[tenant] = keep
            self._forget_if_idle(tenant)
        return out

    def drain(self) -> list[T]:
        """Every waiting job, removed (at shutdown)."""
        out = [w.item for q in self._queues.values() for w in q]
        for tenant in list(self._queues):
            self._queues[tenant].clear()
            self._forget_if_idle(tenant)
        return out

    def deferral(self, tenant: str, now: float, base_s: float, cap_s: float = 30.0) -> float:
        """The delay of a job of ``tenant`` sent back to the stream: it grows with the
        tenant's deferrals of the last ``cap_s``, so a tenant with a huge backlog comes
        back spread out and never crowds the others' new jobs out of a fetch (JetStream
        hands out redeliveries before new messages)."""
        start, count = self._deferred.get(tenant, (now, 0))
        if now - start > cap_s:
            start, count = now, 0
        self._deferred[tenant] = (start, count + 1)
        return float(min(cap_s, base_s * (1 + count // self.queue_per_tenant)))

    def running_of(self, tenant: str) -> int:
        return self._by_tenant.get(tenant, 0)

    def _start(self, tenant: str, endpoint: Hashable) -> None:
        self.running += 1
        self._by_tenant[tenant] = self._by_tenant.get(tenant, 0) + 1
        self._by_endpoint[endpoint] = self._by_endpoint.get(endpoint, 0) + 1

    def _forget_if_idle(self, tenant: str) -> None:
        queue = self._queues.get(tenant)
        if queue is not None and not queue and not self._by_tenant.get(tenant):
            del self._queues[tenant]
            self._order.remove(tenant)
