"""Task index: keeps each tenant's numbered task lists (infra/kv/listing.py) in step with
the projector's records, so that ``GET /v1/tasks`` reads a page in O(limit).

Its own consumer (``task-index``) on the events that change a task's state. It does
not fold events itself: it reads the task's record (the projector's, KV ``tasks``)
and converges the lists to the record's state. An event the record does not
reflect yet (the projector has not got to it) is retried shortly; an event the
record has moved past needs nothing more than the record's own state. Each step
is idempotent, so redeliveries and replays are harmless, and a new deployment's
consumer builds the lists from the stream's history.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import nats.errors

from handlers.projector import RecordCache
from infra.errors import TransientError
from infra.kv import TaskRepo
from infra.kv.listing import ListingIndex
from schemas.events import (
    Envelope,
    Event,
    TaskCancelledEvent,
    TaskCompletedEvent,
    TaskFailedEvent,
    TaskReadyEvent,
    TaskRedrivenEvent,
    TaskRejectedEvent,
    TaskRequestedEvent,
    TaskStartedEvent,
)
from schemas.record import STATE_RANK, TaskRecord

if TYPE_CHECKING:
    from infra.bus.subscriber import Delivery

WAIT_S = 0.25
"""How long an event waits in the handler for the projector's record to show it."""

_STATE_OF: dict[type[Envelope], str] = {
    TaskRequestedEvent: "requested", TaskReadyEvent: "ready", TaskRejectedEvent: "rejected",
    TaskStartedEvent: "running", TaskCompletedEvent: "completed", TaskFailedEvent: "failed",
    TaskCancelledEvent: "cancelled",
}


def event_state(event: Event) -> str | None:
    """The state ``event`` moves its task to (``None``: none of the indexed events)."""
    if isinstance(event, TaskRedrivenEvent):
        return event.data.to_state
    return _STATE_OF.get(type(event))


def order(generation: int, state: str) -> tuple[int, int]:
    return generation, STATE_RANK[state]


def reflects(record: TaskRecord, event: Event) -> bool:
    """Whether the record already shows ``event`` (or something after it)."""
    state = event_state(event)
    if state is None:
        return True
    return order(record.generation, record.state) >= order(event.taskgeneration, state)


async def handle_event(event: Event, delivery: Delivery, *, tasks: TaskRepo,
                       index: ListingIndex, wait_s: float = WAIT_S,
                       records: RecordCache | None = None) -> list[Envelope]:
    """List the event's task under its tenant, in the state its record is in now.

    ``records``: the projector's cache in the same process, the records it last wrote:
    one that already shows the event saves the read (a newer record has events of its
    own, which move the lists on)."""
    del delivery  # the handler table's signature; the wait is the consumer's schedule
    state = event_state(event)
    if state is not None and index.listed_at(event.subject, order(event.taskgeneration, state)):
        return []  # listed in this state or a later one already (an event behind the record)
    try:
        known = records.get(event.subject) if records is not None else None
        record = known[0] if known is not None and reflects(known[0], event) else (
            await _record_reflecting(tasks, event, wait_s, index))
        await index.converge(record.tenant, record.task_id, record.state,
                             order(record.generation, record.state))
    except (nats.errors.Error, TimeoutError) as exc:
        raise TransientError("kv_unavailable", str(exc)) from exc
    return []


async def _record_reflecting(tasks: TaskRepo, event: Event, wait_s: float,
                             index: ListingIndex) -> TaskRecord:
    """The projector consumes the same events side by side: give it a moment before
    handing the message back for later. A new task is listed (in the list of all) as
    soon as its record is found behind: its state follows. One found at once is listed
    with its state by ``converge`` (one marker write fewer)."""
    deadline = asyncio.get_running_loop().time() + wait_s
    first = True
    while True:
        found = await tasks.get(event.subject)
        if found is not None and reflects(found[0], event):
            return found[0]
        if first and isinstance(event, TaskRequestedEvent):
            await index.add(event.data.tenant, event.data.task_id)
        first = False
        if asyncio.get_running_loop().time() >= deadline:
            raise TransientError("record_behind", f"record of {event.subject} does not show "
                                 f"task.{event.name} yet")
        await asyncio.sleep(0.05)
