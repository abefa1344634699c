"""Status projector: events → TaskRecord, forward-only.

``project`` is pure: given the current record (or none) and one event it
returns the new record, or ``None`` when the event changes nothing (a
duplicate, a replay, an event that arrives after a terminal state). That is
what makes redelivery and replay harmless. ``handle_event`` is the
projector consumer's glue around it: one compare-and-set on KV ``tasks``.

Generations (the ``taskgeneration`` extension attribute): ``rejected``,
``failed``, ``cancelled`` and ``completed`` are terminal whatever arrives
after them, except a ``task.redriven`` of a newer generation, which on-call
publishes to re-open the task (``radtrain dlq redrive``, ``replay --force``).
Events of an older generation than the record's change nothing; an event of a
newer one that is not the ``task.redriven`` itself waits for it (retried).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import nats.errors

from infra.errors import TransientError
from infra.kv import TaskRepo
from schemas.common import ErrorDetail
from schemas.events import (
    Envelope,
    Event,
    TaskCancelledEvent,
    TaskCancelRequestedEvent,
    TaskCompletedEvent,
    TaskFailedEvent,
    TaskProgressEvent,
    TaskReadyEvent,
    TaskRedrivenEvent,
    TaskRejectedEvent,
    TaskRequestedEvent,
    TaskStartedEvent,
)
from schemas.record import STATE_RANK, TERMINAL_STATES, TaskRecord, TaskState

if TYPE_CHECKING:
    from infra.bus.subscriber import Delivery


class RecordMissing(Exception):
    """An event arrived before the task's first event was projected: try again later."""


class GenerationAhead(Exception):
    """An event of a newer generation arrived before the ``task.redriven`` that opens
    that generation was projected: try again later."""


def _new_record(event: TaskRequestedEvent | TaskReadyEvent) -> TaskRecord:
    common = {"state": "requested", "created_at": event.time, "updated_at": event.time,
              "generation": event.taskgeneration}
    if isinstance(event, TaskRequestedEvent):
        req = event.data
        return TaskRecord(task_id=req.task_id, tenant=req.tenant, name=req.name,
                          flow=req.flow, task_type=req.task_type, dataset_id=req.dataset_id,
                          **common)
    spec = event.data
    return TaskRecord(task_id=spec.task_id, tenant=spec.tenant, name=spec.name,
                      flow=spec.flow, task_type=spec.task_type,
                      dataset_id=spec.dataset.dataset_id, **common)


def _advance(rec: TaskRecord, state: TaskState) -> bool:
    return STATE_RANK[state] > STATE_RANK[rec.state]


def project(rec: TaskRecord | None, event: Event) -> TaskRecord | None:
    if rec is None:
        if isinstance(event, TaskRequestedEvent):
            return _new_record(event)
        if not isinstance(event, TaskReadyEvent):
            raise RecordMissing(event.subject)
        rec = _new_record(event)
    elif event.taskgeneration < rec.generation:
        return None  # a stale attempt or a copy from before the task was re-opened
    elif isinstance(event, TaskRedrivenEvent):
        return _reopen(rec, event)
    elif event.taskgeneration > rec.generation:
        raise GenerationAhead(f"{event.subject}: {event.name} of generation "
                              f"{event.taskgeneration}, record at {rec.generation}")
    if isinstance(event, TaskRequestedEvent) or rec.state in TERMINAL_STATES:
        return None
    return _apply(rec, event)


def _reopen(rec: TaskRecord, event: TaskRedrivenEvent) -> TaskRecord | None:
    """A newer generation starts over at ``to_state``; the errors stay as history."""
    if event.taskgeneration <= rec.generation:
        return None
    return rec.model_copy(update={
        "state": event.data.to_state, "generation": event.taskgeneration,
        "redrives": [*rec.redrives, event.data], "cancel_requested": False,
        "progress": None, "updated_at": max(rec.updated_at, event.time)})


def _apply(rec: TaskRecord, event: Event) -> TaskRecord | None:
    """One event of the record's generation on a task that has not ended."""
    upd: dict[str, object] = {"updated_at": max(rec.updated_at, event.time)}
    if isinstance(event, TaskReadyEvent):
        if not _advance(rec, "ready"):
            return None
        upd |= {"state": "ready", "network": event.data.model.entry_id,
                "task_type": event.data.task_type}
    elif isinstance(event, TaskRejectedEvent):
        if not _advance(rec, "rejected"):
            return None
        upd |= {"state": "rejected", "errors": [*rec.errors, *event.data.errors]}
    elif isinstance(event, TaskStartedEvent):
        newer = rec.state == "running" and event.data.attempt > rec.attempt
        if not (_advance(rec, "running") or newer):
            return None
        upd |= {"state": "running", "attempt": event.data.attempt,
                "runner_id": event.data.runner_id}
    elif isinstance(event, TaskProgressEvent):
        if rec.state != "running" or not _is_newer_progress(rec, event):
            return None
        upd |= {"progress": event.data}
    elif isinstance(event, TaskCompletedEvent):
        upd |= {"state": "completed", "metrics": event.data.metrics,
                "artifacts": event.data.artifacts, "duration_s": event.data.duration_s}
    elif isinstance(event, TaskFailedEvent):
        err = ErrorDetail(field="task", code=event.data.code, message=event.data.message)
        upd |= {"state": "failed", "errors": [*rec.errors, err]}
    elif isinstance(event, TaskCancelledEvent):
        upd |= {"state": "cancelled"}
    elif isinstance(event, TaskCancelRequestedEvent):
        if rec.cancel_requested:
            return None
        upd |= {"cancel_requested": True}
    else:  # requested and redriven are handled by project()
        return None
    return rec.model_copy(update=upd)


def _is_newer_progress(rec: TaskRecord, event: TaskProgressEvent) -> bool:
    if rec.progress is None:
        return True
    old, new = rec.progress, event.data
    return (new.epoch, new.step) > (old.epoch, old.step)


async def handle_event(event: Event, delivery: Delivery, *, tasks: TaskRepo) -> list[Envelope]:
    """Fold one event into the task's KV record (compare-and-set); publishes nothing."""
    del delivery
    try:
        await tasks.upsert(event.subject, lambda rec: project(rec, event))
    except RecordMissing as exc:
        raise TransientError("record_missing", f"no record yet for {exc}", delay_s=2.0) from exc
    except GenerationAhead as exc:
        raise TransientError("generation_ahead", str(exc), delay_s=2.0) from exc
    except (nats.errors.Error, TimeoutError) as exc:
        raise TransientError("kv_unavailable", str(exc)) from exc
    return []
