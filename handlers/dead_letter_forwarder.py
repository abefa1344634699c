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

When the dead consumer owns the task's progress (enrich, runner) the task is
marked failed with a deterministic ``task.failed``, unless the stream already
holds a terminal event for it, so the state and the webhooks tell the user.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import nats.errors
from nats.js import JetStreamContext

from infra.bus.consumer import DEAD_LETTER_REASON
from infra.bus.dead_letters import (
    H_TASK,
    TASK_OWNERS,
    Advisory,
    DeadLetter,
    build_dead_letter,
    finished,
)
from infra.bus.last_errors import LastErrors
from infra.bus.publish import publish_event
from infra.bus.stream_read import get_seq
from infra.bus.topology import TASKS_STREAM
from infra.errors import TransientError
from schemas.events import Envelope, TaskFailed, TaskFailedEvent

if TYPE_CHECKING:
    from infra.bus.subscriber import Delivery

log = logging.getLogger("radtrain.dlq")
SOURCE = "radtrain/dlq-forwarder"


def wants_dead_letter(adv: Advisory) -> bool:
    return adv.kind == "max_deliveries" or adv.reason.startswith(DEAD_LETTER_REASON)


def error_text(adv: Advisory, recorded: str | None) -> str:
    if adv.kind == "terminated":
        return adv.reason.removeprefix(DEAD_LETTER_REASON).strip()
    return recorded or ""


def failure_event(adv: Advisory, letter: DeadLetter, error: str) -> TaskFailedEvent | None:
    """The ``task.failed`` a dead letter implies, or ``None`` when it implies none."""
    task_id = letter.headers.get(H_TASK)
    if adv.consumer not in TASK_OWNERS or not task_id or adv.stream != TASKS_STREAM:
        return None
    what = (f"gave up after {adv.deliveries} deliveries" if adv.kind == "max_deliveries"
            else "could not read the message")
    message = f"{adv.consumer} {what}: {error or 'no error recorded'}"
    return TaskFailedEvent(source=SOURCE, subject=task_id, data=TaskFailed(
        task_id=task_id, code="dead_letter", message=message[:2000], retryable=False,
        attempt=max(adv.deliveries, 1)))


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
    await js.publish(letter.subject, letter.data, headers=letter.headers)
    log.warning("dead letter %s:%d from %s after %d deliveries -> %s: %s", adv.stream,
                adv.stream_seq, adv.consumer, adv.deliveries, letter.subject, error)
    event = failure_event(adv, letter, error)
    if event is not None:
        ended = await finished(js, event.subject)
        if ended is None:
            await publish_event(js, event)
        else:
            log.info("task %s already %s; not marking it failed", event.subject, ended)
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
