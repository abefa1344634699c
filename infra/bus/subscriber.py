"""The one shape of every JetStream consumer: decode → handle → publish → settle.

A :class:`Subscriber` names a durable consumer, how its bytes become a typed
input (``decode``, at the boundary, once) and the handler: an async function
``(input, delivery) -> events to publish``. :func:`run_subscriber` fetches,
decodes, calls the handler, publishes every returned event (JetStream-acked,
deterministic ``Nats-Msg-Id``) and only then acks. Typed errors decide the rest
(infra/bus/consumer.py, DESIGN.md §9).

Order: the messages of one *lane* (by default one task: ``tasks.<event>.<task_id>``)
are settled one after the other in stream order; the lanes of a fetched batch run
side by side, so a batch of ``batch`` messages has at most ``batch`` handlers in
flight and one task's events are never folded out of order (DESIGN.md §12).
Messages whose subject names no lane share one lane: such a consumer is sequential.

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
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
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
from infra.bus.dead_letters import finished, generation_of
from infra.bus.publish import publish_event
from infra.bus.topology import stream_of
from infra.errors import PoisonMessage, TransientError
from infra.telemetry.logging import log_context
from infra.telemetry.metrics import CONSUMER_LAG, EVENT_LATENCY, EVENTS_HANDLED, labelled
from schemas.cloudevents import event_bytes
from schemas.common import is_identifier
from schemas.events import Envelope, Event, TaskFailed, TaskFailedEvent, parse_event

log = logging.getLogger(__name__)

E = TypeVar("E")
K = TypeVar("K")
V = TypeVar("V")
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
    fetched_at: float = field(default_factory=time.monotonic)
    """``time.monotonic()`` when the message was fetched (for :class:`SharedReads`)."""

    async def in_progress(self) -> None:
        """Push the ack deadline back (a long-running handler's heartbeat)."""
        await self.msg.in_progress()


Handler = Callable[[E, Delivery], Awaitable[Sequence[Envelope]]]
"""``(decoded input, delivery) -> events to publish before the ack``; dependencies are
bound by each process's wiring (functools.partial)."""


def task_of_subject(subject: str) -> str | None:
    """The task id of ``tasks.<event>.<task_id>`` or ``dispatch.<pool>.<task_id>`` (a
    runner pool's copy of a ``task.ready``); None for any other subject."""
    parts = subject.split(".")
    if len(parts) == 3 and parts[0] in ("tasks", "dispatch") and is_identifier(parts[2]):
        return parts[2]
    return None


def one_lane(subject: str) -> None:
    """Every message in one lane: the consumer settles its messages one at a time."""
    del subject


@dataclass(frozen=True)
class Subscriber(Generic[E]):
    durable: str
    decode: Callable[[bytes], E]
    """Raises ``ValueError`` (``pydantic.ValidationError`` is one) for bytes it refuses."""
    handle: Handler[E]
    batch: int = 64
    """Messages fetched at once: also the most handled side by side (see ``lane``)."""
    concurrent: bool = False
    """Settle a batch's messages all side by side, in no order: for work that waits on
    others (webhook receivers with a 15 s timeout)."""
    lane: Callable[[str], str | None] = task_of_subject
    """Subject → lane: one lane's messages are settled in stream order, lanes side by
    side; ``None`` is one lane too. The default keeps each task's events in order."""
    skip: Callable[[Msg], bool] | None = None
    """A cheap test on the raw message (subject, headers, bytes) for a consumer whose
    filter delivers mostly events it has nothing to do with (the search handler and
    every task's ``task.rejected``): ``True`` acks the message at once, undecoded. Only
    for events other consumers decode: a malformed one is dead-lettered by them."""


class SharedReads(Generic[K, V]):
    """Reads of one key by handlers running side by side share one request: a batch of
    task.requested on one dataset reads it once, not once per event.

    A handler joins only a read that started after its own message was fetched
    (``Delivery.fetched_at``), so that read sees every write that happened before the
    message was published, as the handler's own read would: nothing older is served.
    Nothing is kept once a read completes (no cache, no TTL)."""

    def __init__(self, read: Callable[[K], Awaitable[V]]) -> None:
        self._read = read
        self._flights: dict[K, tuple[float, asyncio.Future[V]]] = {}

    async def get(self, key: K, delivery: Delivery) -> V:
        flight = self._flights.get(key)
        if flight is None or flight[0] < delivery.fetched_at:
            flight = (time.monotonic(), asyncio.ensure_future(self._read(key)))
            self._flights[key] = flight
            flight[1].add_done_callback(lambda _: self._land(key, flight))
        return await asyncio.shield(flight[1])

    def _land(self, key: K, flight: tuple[float, asyncio.Future[V]]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight[1].cancelled():
            flight[1].exception()  # retrieved: every joiner that awaits it re-raises it


# --- decoders ---------------------------------------------------------------------


class DecodeCache:
    """The task events this process decoded lately, by their exact bytes.

    Several consumers of one process receive each task event (projector, task index,
    webhooks and search all get a ``task.rejected``), each as its own delivery of the
    same bytes: decoding those bytes once saves the pydantic validation, the largest
    CPU cost of a delivery. Events are immutable (``Strict`` models are frozen), so
    handing the same object to several handlers is safe. Bounded by the bytes it
    holds (``max_bytes`` of JSON; the decoded models take about 6 times more): the
    oldest entry goes first; a consumer far behind the others just decodes again."""

    def __init__(self, max_bytes: int = 4 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self.held = 0
        self._items: OrderedDict[bytes, Event] = OrderedDict()  # popitem(last=False): O(1)

    def parse(self, raw: bytes) -> Event:
        """``parse_event(raw)``, from memory when the same bytes were decoded lately."""
        event = self._items.get(raw)
        if event is None:
            event = parse_event(raw)  # raises on bad bytes: nothing is kept for them
            if len(raw) <= self.max_bytes:
                self._items[raw] = event
                self.held += len(raw)
                while self.held > self.max_bytes:
                    self.held -= len(self._items.popitem(last=False)[0])
        return event


@overload
def event_decoder(*, cache: DecodeCache | None = None) -> Callable[[bytes], Event]: ...
@overload
def event_decoder(kind: type[EnvT], /, *,
                  cache: DecodeCache | None = None) -> Callable[[bytes], EnvT]: ...
@overload
def event_decoder(*types: type[Envelope],
                  cache: DecodeCache | None = None) -> Callable[[bytes], Envelope]: ...
def event_decoder(*types: type[Envelope],
                  cache: DecodeCache | None = None) -> Callable[[bytes], Any]:
    """Any task event (no ``types``), or only the given ones: another type is a
    ``ValueError`` naming the expected types. With a ``cache`` shared by a process's
    consumers, bytes one of them decoded lately are not decoded again."""
    names = " or ".join(f"task.{t.name}" for t in types)
    parse = cache.parse if cache is not None else parse_event

    def decode(raw: bytes) -> Envelope:
        event = parse(raw)
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
    # The generation the bytes claim (headers or a readable attribute): a re-opened task's
    # bad message must fail that generation, not hide behind the first one's end.
    generation = generation_of(delivery.msg.headers, delivery.msg.data)
    try:
        ended = await finished(js, task_id, other_than=stream_seq(delivery.msg),
                               generation=generation)
    except (nats.errors.Error, TimeoutError) as exc:
        raise TransientError("stream_unavailable", repr(exc), delay_s=2.0) from exc
    if ended is not None:
        log.info("task %s already %s; not marking it failed", task_id, ended)
        return poison
    await publish_all(js, [TaskFailedEvent(
        source=f"radtrain/{durable}", subject=task_id, taskgeneration=generation, data=TaskFailed(
            task_id=task_id, code=INVALID_EVENT, retryable=False, attempt=delivery.attempt,
            message=f"{durable} could not read {poison.message}"[:MAX_FAILED_MESSAGE_CHARS]))])
    return poison


async def handle_message(js: JetStreamContext, sub: Subscriber[Any], msg: Msg,
                         plan: RetryPlan, fetched_at: float | None = None) -> str:
    """Decode, handle, publish, settle one message in its log context; returns the outcome."""
    if sub.skip is not None and sub.skip(msg):  # nothing for this consumer: no decode
        await msg.ack()
        labelled(EVENTS_HANDLED, sub.durable, event_name(msg.subject), "skipped").inc()
        return "skipped"
    delivery = Delivery(subject=msg.subject, attempt=delivery_count(msg), plan=plan, msg=msg,
                        fetched_at=time.monotonic() if fetched_at is None else fetched_at)
    started = time.perf_counter()
    try:  # a binary-mode CloudEvent (ce-* headers) becomes the structured bytes first
        decoded, refused = sub.decode(event_bytes(msg.headers, msg.data)), None
    except Exception as exc:  # settled below like any error of the work
        decoded, refused = None, exc

    async def work() -> None:
        if isinstance(refused, ValueError):  # pydantic.ValidationError, JSON, wrong type
            raise await undecodable(js, sub.durable, delivery, refused) from refused
        if refused is not None:
            raise refused
        await publish_all(js, await sub.handle(decoded, delivery))

    task_id, trace = _context_of(decoded, msg) if refused is None else message_context(msg.data)
    with log_context(task_id=task_id or task_of_subject(msg.subject), traceparent=trace):
        outcome = await settle(msg, work, plan)
    labelled(EVENTS_HANDLED, sub.durable, event_name(msg.subject), outcome).inc()
    labelled(EVENT_LATENCY, sub.durable).observe(time.perf_counter() - started)
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
            await settle_batch(js, sub, msgs, plan, time.monotonic())
            _record_lag(sub.durable, msgs)
    finally:
        await psub.unsubscribe()


async def settle_batch(js: JetStreamContext, sub: Subscriber[Any], msgs: list[Msg],
                       plan: RetryPlan, fetched_at: float) -> None:
    """Each lane's messages in order, the lanes side by side (``concurrent``: all at once)."""
    if sub.concurrent:
        await asyncio.gather(*(handle_message(js, sub, m, plan, fetched_at) for m in msgs))
        return
    lanes: dict[str | None, list[Msg]] = {}
    for msg in msgs:
        lanes.setdefault(sub.lane(msg.subject), []).append(msg)

    async def in_order(lane: list[Msg]) -> None:
        for msg in lane:
            await handle_message(js, sub, msg, plan, fetched_at)

    if len(lanes) == 1:
        await in_order(msgs)
    else:
        await asyncio.gather(*(in_order(lane) for lane in lanes.values()))


def _context_of(decoded: object, msg: Msg) -> tuple[str | None, str | None]:
    """Task id and traceparent for the logs, from the decoded input (an envelope's
    ``subject``, a job's ``task_id``): the bytes are not parsed a second time."""
    task_id = getattr(decoded, "subject" if isinstance(decoded, Envelope) else "task_id", None)
    trace = getattr(decoded, "traceparent", None)
    return (task_id if isinstance(task_id, str) else task_of_subject(msg.subject),
            trace if isinstance(trace, str) else None)


def _record_lag(durable: str, msgs: list[Msg]) -> None:
    """Each delivery says how many messages still wait behind it: lag without an API call."""
    try:
        CONSUMER_LAG.labels(durable).set(msgs[-1].metadata.num_pending)
    except Exception:  # no JetStream metadata (a unit-test message)
        pass
