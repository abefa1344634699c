"""The one shape of every JetStream consumer: decode → handle → publish → settle.

A :class:`Subscriber` names a durable consumer, how its bytes become a typed
input (``decode``, at the boundary, once) and the handler: an async function
``(input, delivery) -> events to publish``. :func:`run_subscriber` fetches,
decodes, calls the handler, publishes every returned event (JetStream-acked,
deterministic ``Nats-Msg-Id``) and only then acks. Typed errors decide the rest
(infra/bus/consumer.py, DESIGN.md §9).

One policy for a message that does not decode, whatever the consumer: it is a
dead letter (``term`` with a ``dead-letter invalid_event`` reason naming the
subject and the validation errors, which the forwarder copies into ``DLQ``),
and when its subject names a task (``tasks.<event>.<task_id>``) that task is
marked failed here with ``task.failed`` (``invalid_event``, not retryable),
unless the stream already holds a terminal event for it. Its ``Nats-Msg-Id``
is ``<task_id>:failed``, so several consumers dead-lettering the same bad
message publish it once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import BaseModel

from infra.bus.consumer import (
    RetryPlan,
    delivery_count,
    event_name,
    load_plan,
    message_context,
    settle,
    stream_seq,
)
from infra.bus.dead_letters import finished
from infra.bus.publish import publish_event
from infra.bus.topology import stream_of
from infra.errors import PoisonMessage, TransientError
from infra.telemetry.logging import log_context
from infra.telemetry.metrics import CONSUMER_LAG, EVENT_LATENCY, EVENTS_HANDLED
from schemas.cloudevents import event_bytes
from schemas.common import is_identifier
from schemas.events import Envelope, Event, TaskFailed, TaskFailedEvent, parse_event

log = logging.getLogger(__name__)

E = TypeVar("E")
EnvT = TypeVar("EnvT", bound=Envelope)
M = TypeVar("M", bound=BaseModel)

INVALID_EVENT = "invalid_event"
MAX_FAILED_MESSAGE_CHARS = 2000


@dataclass(frozen=True)
class Delivery:
    """What a handler may know about the message besides its decoded input."""

    subject: str
    attempt: int
    """JetStream delivery count, 1 on the first delivery."""
    plan: RetryPlan
    """The consumer's retry plan as read from the server: ``plan.is_last(attempt)``."""
    msg: Msg
    """The raw message, only for ``in_progress()`` heartbeats (the runner)."""

    async def in_progress(self) -> None:
        """Push the ack deadline back (a long-running handler's heartbeat)."""
        await self.msg.in_progress()


Handler = Callable[[E, Delivery], Awaitable[Sequence[Envelope]]]
"""``(decoded input, delivery) -> events to publish before the ack``; dependencies are
bound by each process's wiring (functools.partial)."""


@dataclass(frozen=True)
class Subscriber(Generic[E]):
    durable: str
    decode: Callable[[bytes], E]
    """Raises ``ValueError`` (``pydantic.ValidationError`` is one) for bytes it refuses."""
    handle: Handler[E]
    batch: int = 16
    concurrent: bool = False
    """Settle a batch's messages side by side: for work that waits on others (webhook
    receivers with a 15 s timeout), not for ordered work."""


# --- decoders ---------------------------------------------------------------------


@overload
def event_decoder() -> Callable[[bytes], Event]: ...
@overload
def event_decoder(kind: type[EnvT], /) -> Callable[[bytes], EnvT]: ...
@overload
def event_decoder(*types: type[Envelope]) -> Callable[[bytes], Envelope]: ...
def event_decoder(*types: type[Envelope]) -> Callable[[bytes], Any]:
    """Any task event (no ``types``), or only the given ones: another type is a
    ``ValueError`` naming the expected types."""
    names = " or ".join(f"task.{t.name}" for t in types)

    def decode(raw: bytes) -> Envelope:
        event = parse_event(raw)
        if types and not isinstance(event, types):
            raise ValueError(f"expected a {names} event, got {event.type}")
        return event

    return decode


def model_decoder(model: type[M]) -> Callable[[bytes], M]:
    """A plain pydantic model (a webhook job, ...): ``ValidationError`` on bad bytes."""

    def decode(raw: bytes) -> M:
        return model.model_validate_json(raw)

    return decode


# --- one message --------------------------------------------------------------------


def task_of_subject(subject: str) -> str | None:
    """The task id of ``tasks.<event>.<task_id>``; None for any other subject."""
    parts = subject.split(".")
    if len(parts) == 3 and parts[0] == "tasks" and is_identifier(parts[2]):
        return parts[2]
    return None


async def publish_all(js: JetStreamContext, events: Sequence[Envelope]) -> None:
    """Publish in order, each JetStream-acked; a failure is transient (nak, retry)."""
    for event in events:
        try:
            await publish_event(js, event)
        except (nats.errors.Error, TimeoutError) as exc:
            raise TransientError("publish_failed", f"{event.nats_subject}: {exc!r}") from exc


async def undecodable(js: JetStreamContext, durable: str, delivery: Delivery,
                      error: ValueError) -> PoisonMessage:
    """Fail the task the subject names (once, whoever sees it first); the error to raise."""
    poison = PoisonMessage(INVALID_EVENT, f"{delivery.subject}: {error}")
    task_id = task_of_subject(delivery.subject)
    if task_id is None:
        return poison
    try:
        ended = await finished(js, task_id, other_than=stream_seq(delivery.msg))
    except (nats.errors.Error, TimeoutError) as exc:
        raise TransientError("stream_unavailable", repr(exc), delay_s=2.0) from exc
    if ended is not None:
        log.info("task %s already %s; not marking it failed", task_id, ended)
        return poison
    await publish_all(js, [TaskFailedEvent(
        source=f"radtrain/{durable}", subject=task_id, data=TaskFailed(
            task_id=task_id, code=INVALID_EVENT, retryable=False, attempt=delivery.attempt,
            message=f"{durable} could not read {poison.message}"[:MAX_FAILED_MESSAGE_CHARS]))])
    return poison


async def handle_message(js: JetStreamContext, sub: Subscriber[Any], msg: Msg,
                         plan: RetryPlan) -> str:
    """Decode, handle, publish, settle one message in its log context; returns the outcome."""
    delivery = Delivery(subject=msg.subject, attempt=delivery_count(msg), plan=plan, msg=msg)

    async def work() -> None:
        try:  # a binary-mode CloudEvent (ce-* headers) becomes the structured bytes first
            decoded = sub.decode(event_bytes(msg.headers, msg.data))
        except ValueError as exc:  # pydantic.ValidationError, JSON, wrong type
            raise await undecodable(js, sub.durable, delivery, exc) from exc
        await publish_all(js, await sub.handle(decoded, delivery))

    task_id, trace = message_context(msg.data)
    started = time.perf_counter()
    with log_context(task_id=task_id or task_of_subject(msg.subject), traceparent=trace):
        outcome = await settle(msg, work, plan)
    EVENTS_HANDLED.labels(sub.durable, event_name(msg.subject), outcome).inc()
    EVENT_LATENCY.labels(sub.durable).observe(time.perf_counter() - started)
    return outcome


# --- the loop -------------------------------------------------------------------------


async def run_subscriber(js: JetStreamContext, sub: Subscriber[Any], stop: asyncio.Event,
                         *, fetch_timeout: float = 1.0) -> None:
    """Pull from the existing durable consumer ``sub.durable`` until ``stop`` is set."""
    psub = await js.pull_subscribe_bind(durable=sub.durable, stream=stream_of(sub.durable))
    plan = await load_plan(js, psub, sub.durable)
    try:
        while not stop.is_set():
            try:
                msgs = await psub.fetch(sub.batch, timeout=fetch_timeout)
            except TimeoutError:
                CONSUMER_LAG.labels(sub.durable).set(0)
                continue
            except nats.errors.Error as exc:  # disconnected: the client reconnects by itself
                log.warning("fetch on %s failed: %r; retrying", sub.durable, exc)
                await asyncio.sleep(1.0)
                continue
            if sub.concurrent:
                await asyncio.gather(*(handle_message(js, sub, m, plan) for m in msgs))
            else:
                for msg in msgs:
                    await handle_message(js, sub, msg, plan)
            _record_lag(sub.durable, msgs)
    finally:
        await psub.unsubscribe()


def _record_lag(durable: str, msgs: list[Msg]) -> None:
    """Each delivery says how many messages still wait behind it: lag without an API call."""
    try:
        CONSUMER_LAG.labels(durable).set(msgs[-1].metadata.num_pending)
    except Exception:  # no JetStream metadata (a unit-test message)
        pass
