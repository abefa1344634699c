"""Re-opening a task as a new generation: what ``dlq redrive`` and ``replay --force`` do.

A task that ended (or is running) cannot simply be given its events again:
its terminal state holds and the runner refuses a second run. On-call re-opens
it instead (DESIGN.md §9): a ``task.redriven`` of generation ``n + 1`` on
``tasks.redriven.<id>`` (who, why, from which state, which dead letter), then
the chosen ``task.requested`` or ``task.ready`` again with that generation.
The projector moves the record back to ``requested``/``ready`` and lists the
redrive; events of generation ``n`` no longer change the task. Each copy's
``Nats-Msg-Id`` names the generation (``<id>:requested:g2``), so JetStream's
duplicate window does not drop it, while two on-call engineers re-opening the
same task from the same (lagging) record publish it once.
"""

from __future__ import annotations

import getpass
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from nats.js import JetStreamContext

from infra.bus.dead_letters import MSG_ID, REDRIVE_OF, REPLAY_OF
from infra.bus.topology import DLQ_STREAM, TASKS_STREAM
from schemas.events import (
    Envelope,
    TaskReadyEvent,
    TaskRedriven,
    TaskRedrivenEvent,
    TaskRequestedEvent,
    encode_event,
)
from schemas.record import TaskRecord

SOURCE = "radtrain/oncall"
REOPENERS = ("requested", "ready")
"""The events a task can be re-opened with; the task goes back to the state they name."""


def current_user() -> str:
    """Who re-opens, when ``--by`` does not say: the OS user name."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (a container)
        return "oncall"


@dataclass(frozen=True)
class Reopening:
    """The two events to publish, in this order."""

    redriven: TaskRedrivenEvent
    event: TaskRequestedEvent | TaskReadyEvent

    @property
    def generation(self) -> int:
        return self.redriven.taskgeneration


@dataclass(frozen=True)
class Reopened:
    task_id: str
    generation: int
    redriven_seq: int
    event_seq: int
    duplicate: bool
    """JetStream already held this generation's events (the same re-open, twice)."""


def reopening(record: TaskRecord, event: Envelope, *, by: str, reason: str = "",
              dead_letter_seq: int | None = None, now: datetime | None = None) -> Reopening:
    """Generation ``record.generation + 1``: the ``task.redriven`` and the event again
    (a new CloudEvents id and time, the same payload, extensions and trace)."""
    if not isinstance(event, TaskRequestedEvent | TaskReadyEvent):
        raise ValueError(f"a task is re-opened with its task.requested or task.ready, "
                         f"not task.{event.name}")
    if event.subject != record.task_id:
        raise ValueError(f"event of task {event.subject!r} for record {record.task_id!r}")
    gen = record.generation + 1
    carry = {**event.carry(), "taskgeneration": gen}
    when = now or datetime.now(UTC)
    redriven = TaskRedrivenEvent(
        source=SOURCE, subject=record.task_id, time=when, traceparent=event.traceparent,
        **carry, data=TaskRedriven(
            task_id=record.task_id, by=by, reason=reason, to_state=event.name,
            from_state=record.state, dead_letter_seq=dead_letter_seq))
    again = event.model_copy(update={"id": str(uuid.uuid4()), "time": when,
                                     "taskgeneration": gen})
    return Reopening(redriven=redriven, event=again)


async def publish_reopening(js: JetStreamContext, plan: Reopening, *,
                            original_seq: int | None = None,
                            dead_letter_seq: int | None = None,
                            original_stream: str = TASKS_STREAM) -> Reopened:
    """``task.redriven`` first (the projector opens the generation), then the event,
    with headers naming what it copies."""
    first = await js.publish(plan.redriven.nats_subject, encode_event(plan.redriven),
                             headers={MSG_ID: plan.redriven.msg_id}, timeout=10.0)
    headers = {MSG_ID: plan.event.msg_id}
    if original_seq is not None:
        headers[REPLAY_OF] = f"{original_stream}:{original_seq}"
    if dead_letter_seq is not None:
        headers[REDRIVE_OF] = f"{DLQ_STREAM}:{dead_letter_seq}"
    second = await js.publish(plan.event.nats_subject, encode_event(plan.event),
                              headers=headers, timeout=10.0)
    return Reopened(task_id=plan.redriven.subject, generation=plan.generation,
                    redriven_seq=int(first.seq), event_seq=int(second.seq),
                    duplicate=bool(first.duplicate and second.duplicate))
