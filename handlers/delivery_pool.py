"""The ``webhook-deliveries`` loop: fair across tenants and endpoints (issue 17).

The generic subscriber loop settles a fetched batch as a whole, so one endpoint
that answers slowly holds every tenant's next deliveries until its timeout. Here
jobs are fetched as worker slots free up, wait in per-tenant queues
(:class:`handlers.webhook_fairness.FairQueue`) and start round-robin under three
caps: attempts in the process, per tenant, per endpoint (subscription). Each job
is then settled exactly as the generic loop would (``handle_message``: decode,
attempt, ack or ``nak(delay)``), so retries, signatures and dead letters are
unchanged.

A job that cannot wait here (its tenant's queue is full, or it waited longer
than ``webhook_queue_hold_s``) goes back to the stream with ``nak(defer)``: the
stream is the queue, and the next fetch reaches other tenants' jobs behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Hashable
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from handlers.webhook_fairness import FairQueue
from infra.bus.consumer import load_plan
from infra.bus.subscriber import Subscriber, handle_message
from infra.bus.topology import stream_of
from infra.settings import Settings
from infra.telemetry.metrics import CONSUMER_LAG

log = logging.getLogger("radtrain.webhooks")
TICK_S = 0.5


def job_route(subject: str) -> tuple[str, str]:
    """``webhooks.jobs.<tenant>.<webhook id>`` -> (tenant, endpoint key)."""
    parts = subject.split(".")
    if len(parts) == 4:
        return parts[2], f"{parts[2]}.{parts[3]}"
    return "", subject  # not a job subject: its own queue, settled (refused) as usual


def fair_queue(settings: Settings) -> FairQueue[Msg]:
    return FairQueue(workers=settings.webhook_workers,
                     per_tenant=min(settings.webhook_per_tenant, settings.webhook_workers),
                     per_endpoint=settings.webhook_per_endpoint,
                     queue_per_tenant=settings.webhook_queue_per_tenant)


async def run_fair_deliveries(js: JetStreamContext, sub: Subscriber[Any], stop: asyncio.Event,
                              settings: Settings, *, fetch_timeout: float = 1.0) -> None:
    """Pull ``sub.durable`` and settle its jobs fairly until ``stop`` is set."""
    psub = await js.pull_subscribe_bind(durable=sub.durable, stream=stream_of(sub.durable))
    plan = await load_plan(js, psub, sub.durable)
    queue = fair_queue(settings)
    capacity = settings.webhook_workers + settings.webhook_queue_per_tenant
    running: set[asyncio.Task[str]] = set()
    fetching: asyncio.Task[list[Msg]] | None = None

    def start(tenant: str, endpoint: Hashable, msg: Msg) -> None:
        task = asyncio.create_task(handle_message(js, sub, msg, plan, time.monotonic()))
        running.add(task)

        def done(t: asyncio.Task[str]) -> None:
            running.discard(t)
            queue.release(tenant, endpoint)

        task.add_done_callback(done)

    try:
        while not stop.is_set():
            while (ready := queue.pop()) is not None:
                start(*ready)
            await _defer(queue.expired(time.monotonic(), settings.webhook_queue_hold_s),
                         settings.webhook_defer_s)
            room = capacity - queue.queued - queue.running
            if fetching is None and room > 0:
                fetching = asyncio.create_task(
                    psub.fetch(min(room, sub.batch), timeout=fetch_timeout))
            waits: set[asyncio.Task[Any]] = {*running, *([fetching] if fetching else [])}
            if not waits:
                await asyncio.sleep(TICK_S)
                continue
            await asyncio.wait(waits, timeout=TICK_S, return_when=asyncio.FIRST_COMPLETED)
            if fetching is not None and fetching.done():
                await _admit(queue, _fetched(fetching, sub.durable), settings)
                fetching = None
    finally:
        if fetching is not None:
            with contextlib.suppress(Exception):
                await _defer(await fetching, 0.0)
        await _defer(queue.drain(), 0.0)
        if running:
            await asyncio.wait(running, timeout=settings.webhook_timeout_s + 5.0)
        await psub.unsubscribe()


def _fetched(fetching: asyncio.Task[list[Msg]], durable: str) -> list[Msg]:
    try:
        msgs = fetching.result()
    except TimeoutError:
        CONSUMER_LAG.labels(durable).set(0)
        return []
    except nats.errors.Error as exc:  # disconnected: the client reconnects by itself
        log.warning("fetch on %s failed: %r; retrying", durable, exc)
        return []
    with contextlib.suppress(Exception):  # a unit-test message has no metadata
        CONSUMER_LAG.labels(durable).set(msgs[-1].metadata.num_pending)
    return msgs


async def _admit(queue: FairQueue[Msg], msgs: list[Msg], settings: Settings) -> None:
    now = time.monotonic()
    for msg in msgs:
        tenant, endpoint = job_route(msg.subject)
        if not queue.push(tenant, endpoint, msg, now):
            await _defer([msg], queue.deferral(tenant, now, settings.webhook_defer_s))


async def _defer(msgs: list[Msg], delay_s: float) -> None:
    """Back to the stream, to be fetched again after ``delay_s``: not an attempt."""
    for msg in msgs:
        try:
            await msg.nak(delay=delay_s or None)
        except Exception as exc:  # the ack wait will hand it back anyway
            log.debug("nak of deferred %s failed: %r", msg.subject, exc)
