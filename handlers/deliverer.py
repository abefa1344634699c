"""Webhook deliverer glue: status event -> one job per subscription -> signed HTTP attempts.

Two consumers. ``webhooks`` (on ``TASKS`` status subjects) fans each event out
into jobs on the ``WEBHOOKS`` stream and acks. ``webhook-deliveries`` makes
one attempt per delivery of a job; on failure it records the attempt and
raises ``TransientError(delay)``, which the subscriber turns into
``nak(delay)``: JetStream keeps the job and its schedule durably, across
restarts and replicas, with no timer in memory. After the retry window the
delivery is marked failed and the job acked.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import aiohttp
import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from handlers.webhook_fairness import BreakerPolicy, admit, changed, claim_probe
from handlers.webhook_fairness import record as breaker_after
from handlers.webhooks import (
    RetryPolicy,
    delivery_id,
    is_success,
    request_headers,
    subscribers,
    webhook_event_type,
)
from infra.bus.topology import KV_WEBHOOK_BREAKERS, TASKS_STREAM
from infra.errors import TransientError
from infra.kv import DeliveryRepo, KVRepository, TaskRepo, WebhookRepo
from infra.kv.ready import open_when_ready
from infra.security.address_guard import BlockedAddress, GuardedResolver, check_url
from infra.security.sealing import load_seal_key
from infra.settings import Settings
from infra.telemetry.metrics import WEBHOOK_ATTEMPTS
from schemas.cloudevents import event_bytes
from schemas.events import (
    Envelope,
    Event,
    TaskRejectedEvent,
    TaskRequestedEvent,
    parse_event,
)
from schemas.webhooks import (
    Delivery,
    DeliveryAttempt,
    DeliveryState,
    EndpointBreaker,
    WebhookEventType,
    WebhookJob,
    WebhookSubscription,
    active_secrets,
)

if TYPE_CHECKING:
    from infra.bus import subscriber as bus

log = logging.getLogger("radtrain.webhooks")


@dataclass
class WebhookContext:
    settings: Settings
    subs: WebhookRepo
    deliveries: DeliveryRepo
    session: aiohttp.ClientSession
    policy: RetryPolicy
    breakers: KVRepository[EndpointBreaker]
    breaker_policy: BreakerPolicy

    async def close(self) -> None:
        await self.session.close()
        if self.subs.cache is not None:
            await self.subs.cache.close()


async def open_webhooks(settings: Settings, js: JetStreamContext) -> WebhookContext:
    """One HTTP session whose resolver refuses non-public addresses (unless allowed)."""
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(settings.webhooks_allow_private),
                                     use_dns_cache=False, limit=settings.webhook_workers)
    session = aiohttp.ClientSession(connector=connector, trust_env=False)
    return WebhookContext(
        settings=settings,
        subs=(await WebhookRepo.open(js, seal_key=load_seal_key(settings))).cached(
            settings.webhook_list_cache_s),
        deliveries=await DeliveryRepo.open(js), session=session,
        policy=RetryPolicy(settings.webhook_retry_base_s, settings.webhook_retry_max_delay_s,
                           settings.webhook_retry_window_s),
        breakers=await open_when_ready(open_breakers, js),
        breaker_policy=breaker_policy(settings))


async def open_breakers(js: JetStreamContext) -> KVRepository[EndpointBreaker]:
    """KV ``webhook_breakers``: ``<tenant>.<webhook id>`` -> its circuit breaker."""
    return await KVRepository.open(js, KV_WEBHOOK_BREAKERS, EndpointBreaker)


def breaker_policy(settings: Settings) -> BreakerPolicy:
    return BreakerPolicy(failures=settings.webhook_breaker_failures,
                         period_s=settings.webhook_breaker_period_s,
                         cooldown_s=settings.webhook_breaker_cooldown_s,
                         probe_timeout_s=settings.webhook_timeout_s + 30.0)


async def _tenant_of(js: JetStreamContext, tasks: TaskRepo, event: Event) -> str:
    """Status events carry no tenant (but rejected): the record or the request says it."""
    if isinstance(event, TaskRejectedEvent):
        return event.data.tenant
    found = await tasks.get(event.subject)
    if found is not None:
        return found[0].tenant
    try:
        raw = await js.get_last_msg(TASKS_STREAM, f"tasks.requested.{event.subject}")
        requested = parse_event(raw.data or b"")
    except (NotFoundError, ValidationError):
        requested = None
    if isinstance(requested, TaskRequestedEvent):
        return requested.data.tenant
    raise TransientError("tenant_unknown", f"task {event.subject}: no record yet")


async def on_status_event(event: Event, delivery: bus.Delivery, *, js: JetStreamContext,
                          tasks: TaskRepo, ctx: WebhookContext) -> list[Envelope]:
    """Fan out: one delivery record and one job per matching subscription.

    The jobs go to the ``WEBHOOKS`` stream (not task events): published here, each
    with its deterministic delivery id, before the subscriber acks the event."""
    wtype = webhook_event_type(event.type)
    if wtype is None:
        return []
    try:
        tenant = await _tenant_of(js, tasks, event)
        subs = subscribers(await ctx.subs.list(tenant), wtype)
        if not subs:  # most tenants subscribe to few events: nothing to encode
            return []
        # The event as published, not re-encoded (one that came in binary mode, with ce-*
        # headers, becomes its structured form: a webhook body is a whole CloudEvent).
        body = event_bytes(delivery.msg.headers, delivery.msg.data).decode()
        for sub in subs:
            await _enqueue(js, ctx, tenant, sub, event, wtype, body)
    except (nats.errors.Error, TimeoutError) as exc:
        raise TransientError("kv_unavailable", str(exc)) from exc
    return []


async def _enqueue(js: JetStreamContext, ctx: WebhookContext, tenant: str,
                   sub: WebhookSubscription, event: Event, wtype: WebhookEventType,
                   body: str) -> None:
    did = delivery_id(event.id, sub.id)
    now = datetime.now(UTC)
    delivery = Delivery(id=did, webhook_id=sub.id, event_id=event.id, event_type=wtype,
                        task_id=event.subject, created_at=now, updated_at=now)
    if not await ctx.deliveries.create(tenant, delivery):
        existing = await ctx.deliveries.get(tenant, sub.id, did)
        if existing is not None and existing[0].attempts:
            return  # a redelivered event whose job already ran
    job = WebhookJob(delivery_id=did, webhook_id=sub.id, tenant=tenant, task_id=event.subject,
                     event_type=wtype, body=body, first_at=now,
                     traceparent=event.traceparent)
    await js.publish(f"webhooks.jobs.{tenant}.{sub.id}", job.model_dump_json().encode(),
                     headers={"Nats-Msg-Id": did}, timeout=10.0)


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    error: str | None
    duration_ms: float

    @property
    def ok(self) -> bool:
        return self.status_code is not None and is_success(self.status_code)


async def send(ctx: WebhookContext, sub: WebhookSubscription, job: WebhookJob) -> Outcome:
    """One signed POST; never raises for the receiver's faults, it reports them."""
    body = job.body.encode()
    headers = request_headers(active_secrets(sub, datetime.now(UTC)), job.delivery_id,
                              int(time.time()), body, job.traceparent)
    started = time.perf_counter()

    def done(status: int | None, error: str | None) -> Outcome:
        return Outcome(status, error, (time.perf_counter() - started) * 1000.0)

    try:
        check_url(sub.url, ctx.settings.webhooks_allow_private)
        timeout = aiohttp.ClientTimeout(total=ctx.settings.webhook_timeout_s)
        async with ctx.session.post(sub.url, data=body, headers=headers, timeout=timeout,
                                    allow_redirects=False) as resp:
            return done(resp.status, None if is_success(resp.status) else f"HTTP {resp.status}")
    except BlockedAddress as exc:
        return done(None, f"blocked_address: {exc}")
    except aiohttp.ClientConnectorError as exc:
        if isinstance(exc.os_error, BlockedAddress):
            return done(None, f"blocked_address: {exc.os_error}")
        return done(None, f"connect_error: {exc}")
    except TimeoutError:
        return done(None, f"timeout after {ctx.settings.webhook_timeout_s:.0f}s")
    except aiohttp.ClientError as exc:
        return done(None, f"http_error: {exc!r}")


async def on_delivery_job(job: WebhookJob, delivery: bus.Delivery, *,
                          ctx: WebhookContext) -> list[Envelope]:
    """One attempt; success or give-up acks, anything else naks with the next delay."""
    del delivery  # the attempt count is the delivery record's, not JetStream's
    found = await ctx.deliveries.get(job.tenant, job.webhook_id, job.delivery_id)
    if found is not None and found[0].state != "pending":
        return []
    sub = await ctx.subs.get(job.tenant, job.webhook_id)
    if sub is None:
        await _record(ctx, job, None, "failed")
        return []
    if not await _gate(ctx, job):
        return []  # held back by an open circuit until its retry window closed
    outcome = await send(ctx, sub, job)
    await _breaker_outcome(ctx, job, outcome)
    attempts = len(found[0].attempts) + 1 if found else 1
    now = datetime.now(UTC)
    delay = None if outcome.ok else ctx.policy.next_delay(attempts, job.first_at, now)
    state: DeliveryState = ("succeeded" if outcome.ok else
                            "pending" if delay is not None else "failed")
    WEBHOOK_ATTEMPTS.labels("ok" if outcome.ok else "retry" if delay else "gave_up").inc()
    attempt = DeliveryAttempt(
        attempt=attempts, at=now, status_code=outcome.status_code, error=outcome.error,
        duration_ms=outcome.duration_ms,
        next_retry_at=now + timedelta(seconds=delay) if delay is not None else None)
    await _record(ctx, job, attempt, state)
    if delay is not None:
        log.info("webhook %s to %s failed (%s); attempt %d, retry in %.1fs",
                 job.delivery_id, sub.url, outcome.error, attempts, delay)
        raise TransientError("webhook_failed", outcome.error or "failed", delay_s=delay)
    return []


def _breaker_key(job: WebhookJob) -> str:
    return f"{job.tenant}.{job.webhook_id}"


async def _gate(ctx: WebhookContext, job: WebhookJob) -> bool:
    """``True``: send. Otherwise put the job back until its endpoint's circuit lets a probe through.

    A job held back by an open circuit spends no attempt; one whose retry window
    has closed meanwhile is given up (marked failed, acked) like any other."""
    now = datetime.now(UTC)
    try:
        breaker = await ctx.breakers.get(_breaker_key(job))
        gate = admit(breaker, now, ctx.breaker_policy)
        if gate.gate == "probe":
            claimed = await ctx.breakers.update(
                _breaker_key(job), lambda b: claim_probe(b, now, ctx.breaker_policy))
            if claimed is not None:
                log.info("webhook %s: circuit half-open, probing with %s", job.webhook_id,
                         job.delivery_id)
                return True
            breaker = await ctx.breakers.get(_breaker_key(job))
            gate = admit(breaker, now, ctx.breaker_policy)
    except (nats.errors.Error, TimeoutError) as exc:
        raise TransientError("kv_unavailable", str(exc)) from exc
    if gate.gate != "wait":
        return True
    if now > job.first_at + timedelta(seconds=ctx.policy.window_s):
        WEBHOOK_ATTEMPTS.labels("gave_up").inc()
        await _record(ctx, job, None, "failed")
        return False
    raise TransientError("circuit_open", f"webhook {job.webhook_id}: circuit open",
                         delay_s=gate.wait_s)


async def _breaker_outcome(ctx: WebhookContext, job: WebhookJob, outcome: Outcome) -> None:
    now = datetime.now(UTC)

    def change(before: EndpointBreaker | None) -> EndpointBreaker | None:
        after = breaker_after(before, outcome.ok, now, ctx.breaker_policy, outcome.error)
        return after if changed(before, after) else None

    try:
        after = await ctx.breakers.update(_breaker_key(job), change)
    except (nats.errors.Error, TimeoutError) as exc:
        log.warning("webhook %s: breaker not updated: %r", job.webhook_id, exc)
        return
    if after is not None and after.state == "open" and after.since == now:
        log.warning("webhook %s: circuit open after %d failures (%s); probe at %s",
                    job.webhook_id, after.failures, outcome.error, after.probe_at)


async def _record(ctx: WebhookContext, job: WebhookJob, attempt: DeliveryAttempt | None,
                  state: DeliveryState) -> None:
    now = datetime.now(UTC)

    def change(d: Delivery) -> Delivery:
        attempts = [*d.attempts, attempt] if attempt else d.attempts
        return d.model_copy(update={"attempts": attempts, "state": state, "updated_at": now})

    updated = await ctx.deliveries.update(job.tenant, job.webhook_id, job.delivery_id, change)
    if updated is None:  # the record expired or was never written: start it from the job
        event = parse_event(job.body)
        await ctx.deliveries.create(job.tenant, change(Delivery(
            id=job.delivery_id, webhook_id=job.webhook_id, event_id=event.id,
            event_type=job.event_type, task_id=job.task_id, created_at=job.first_at,
            updated_at=now)))
