"""Dead-letter forwarder: a JetStream advisory → a copy in ``DLQ`` (+ ``task.failed``).

Why a durable consumer on the ``ADVISORIES`` stream rather than a core NATS
subscription: advisories are fire-and-forget, so a subscription misses every
dead letter that happens while the handlers are down or reconnecting; the
stream keeps them until this forwarder has copied each one.

Two advisories make a dead letter (DESIGN.md §9):
- max deliveries: the consumer naked (or timed out) ``max_deliver`` times. The
  last error comes from KV ``consumer_errors`` (recorded by infra/bus/consumer.py).
- terminated with a ``dead-letter`` reason: a ``PoisonMessage``, a message that
  cannot be handled at all (one that does not decode, for every consumer:
  infra/bus/subscriber.py, which has already failed its task). Other terms are
  outcomes the handler already published (``task.failed``/``task.rejected``)
  and are only acknowledged.

When the dead consumer owns the task's progress (enrich, dispatch, a runner pool's
``runner-<pool>`` on ``DISPATCH``) the task is
marked failed with a deterministic ``task.failed``, unless the stream already
holds a terminal event for it, so the state and the webhooks tell the user.

Runner letters come from ``DISPATCH`` (``runner-<pool>``): the copy of the
``task.ready`` filed as ``dlq.runner-<pool>.<task_id>``; after a max-deliveries
advisory the original is deleted from that work queue once copied. A term on a
work-queue stream removes the message at once, so the letter of an unreadable
runner message has no body (``H_MISSING``); its task was failed by the runner's
subscriber, which reads the task id from the subject.

A letter of the ``INBOUND`` stream (the ``admission`` consumer: an upstream
event refused or never admitted) names no task: its body is what an upstream
system sent, and may name another tenant's task id. It is filed as
``dlq.admission.<tenant>`` (the tenant of its subject) without a task header,
so neither this forwarder nor a redrive ever touches a task through it; a
redrive publishes it on its inbound subject again, through admission.
"""

from __future__ import annotations

import logging
from contextlib import suppress
from dataclasses import replace
from typing import TYPE_CHECKING

import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from infra.bus.consumer import DEAD_LETTER_REASON
from infra.bus.dead_letters import (
    H_SUBJECT,
    H_TASK,
    Advisory,
    DeadLetter,
    build_dead_letter,
    carried,
    finished,
    owns_task,
)
from infra.bus.last_errors import LastErrors
from infra.bus.publish import publish_event
from infra.bus.stream_read import get_seq
from infra.bus.topology import DISPATCH_STREAM, INBOUND_STREAM
from infra.errors import TransientError
from schemas.common import is_identifier
from schemas.events import Envelope, TaskFailed, TaskFailedEvent

if TYPE_CHECKING:
    from infra.bus.subscriber import Delivery

log = logging.getLogger("radtrain.dlq")
SOURCE = "radtrain/dlq-forwarder"
H_TENANT = "Radtrain-Dlq-Tenant"
"""On an ``INBOUND`` letter: the tenant its subject (``inbound.<tenant>.…``) names."""


def wants_dead_letter(adv: Advisory) -> bool:
    return adv.kind == "max_deliveries" or adv.reason.startswith(DEAD_LETTER_REASON)


def error_text(adv: Advisory, recorded: str | None) -> str:
    if adv.kind == "terminated":
        return adv.reason.removeprefix(DEAD_LETTER_REASON).strip()
    return recorded or ""


def failure_event(adv: Advisory, letter: DeadLetter, error: str) -> TaskFailedEvent | None:
    """The ``task.failed`` a dead letter implies, or ``None`` when it implies none."""
    task_id = letter.headers.get(H_TASK)
    if not owns_task(adv.consumer, adv.stream) or not task_id:
        return None
    what = (f"gave up after {adv.deliveries} deliveries" if adv.kind == "max_deliveries"
            else "could not read the message")
    message = f"{adv.consumer} {what}: {error or 'no error recorded'}"
    # Of the letter's generation (and with its extensions): a redriven task that dies
    # again fails its new generation, under its own msg id.
    carry = carried(letter.headers, letter.data)
    return TaskFailedEvent(source=SOURCE, subject=task_id, **carry, data=TaskFailed(
        task_id=task_id, code="dead_letter", message=message[:2000], retryable=False,
        attempt=max(adv.deliveries, 1)))


def inbound_letter(letter: DeadLetter) -> DeadLetter:
    """An ``INBOUND`` letter names no task (its body is untrusted): filed per tenant."""
    parts = letter.headers.get(H_SUBJECT, "").split(".")
    tenant = parts[1] if len(parts) == 4 and is_identifier(parts[1]) else "unknown"
    headers = {k: v for k, v in letter.headers.items() if k != H_TASK} | {H_TENANT: tenant}
    consumer = letter.subject.split(".")[1]
    return replace(letter, subject=f"dlq.{consumer}.{tenant}", headers=headers)


async def forward(js: JetStreamContext, adv: Advisory) -> DeadLetter:
    """Copy the original into ``DLQ`` (idempotent: the msg id is the original's seq)."""
    original = await get_seq(js, adv.stream, adv.stream_seq)
    recorded = None
    if adv.kind == "max_deliveries":
        errors = await LastErrors.open(js)
        last = await errors.get(adv.stream, adv.consumer, adv.stream_seq) if errors else None
        recorded = last.summary() if last else None
    error = error_text(adv, recorded)
    letter = build_dead_letter(adv, original, error)
    if adv.stream == INBOUND_STREAM:
        letter = inbound_letter(letter)
    await js.publish(letter.subject, letter.data, headers=letter.headers)
    log.warning("dead letter %s:%d from %s after %d deliveries -> %s: %s", adv.stream,
                adv.stream_seq, adv.consumer, adv.deliveries, letter.subject, error)
    event = failure_event(adv, letter, error)
    if event is not None:
        ended = await finished(js, event.subject, generation=event.taskgeneration)
        if ended is None:
            await publish_event(js, event)
        else:
            log.info("task %s already %s; not marking it failed", event.subject, ended)
    if adv.stream == DISPATCH_STREAM and adv.kind == "max_deliveries" and original is not None:
        # Work-queue retention keeps a message that ran out of deliveries for ever:
        # its copy is in DLQ now (a retry of this forward keeps that copy: same msg id).
        with suppress(NotFoundError):
            await js.delete_msg(DISPATCH_STREAM, adv.stream_seq)
    return letter


async def on_advisory(adv: Advisory, delivery: Delivery, *,
                      js: JetStreamContext) -> list[Envelope]:
    """Decoded by ``parse_advisory``; publishes the DLQ copy (and ``task.failed``) itself:
    a dead letter is not a task event, and the failure waits on the stream's state."""
    del delivery
    if not wants_dead_letter(adv):
        return []  # a handled outcome (task.failed/rejected already published)
    try:
        await forward(js, adv)
    except (nats.errors.Error, TimeoutError) as exc:
        raise TransientError("dlq_unavailable", repr(exc), delay_s=2.0) from exc
    return []
