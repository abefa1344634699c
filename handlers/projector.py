"""Status projector: events → TaskRecord, forward-only.

``project`` is pure: given the current record (or none) and one event it
returns the new record, or ``None`` when the event changes nothing (a
duplicate, a replay, an event that arrives after a terminal state). That is
what makes redelivery and replay harmless. ``handle_event`` is the
projector consumer's glue around it: one compare-and-set on KV ``tasks``.
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
    TaskRejectedEvent,
    TaskRequestedEvent,
    TaskStartedEvent,
)
from schemas.record import STATE_RANK, TERMINAL_STATES, TaskRecord, TaskState

if TYPE_CHECKING:
    from infra.bus.subscriber import Delivery


class RecordMissing(Exception):
    """An event arrived before the task's first event was projected: try again later."""


def _new_record(event: TaskRequestedEvent | TaskReadyEvent) -> TaskRecord:
    data = event.data
    if isinstance(event, TaskRequestedEvent):
        req = event.data
        return TaskRecord(task_id=req.task_id, tenant=req.tenant, name=req.name,
                          state="requested", flow=req.flow, task_type=req.task_type,
                          dataset_id=req.dataset_id, created_at=event.time,
                          updated_at=event.time)
    spec = event.data
    assert data is spec
    return TaskRecord(task_id=spec.task_id, tenant=spec.tenant, name=spec.name,
                      state="requested", flow=spec.flow, task_type=spec.task_type,
                      dataset_id=spec.dataset.dataset_id, created_at=event.time,
                      updated_at=event.time)


def _advance(rec: TaskRecord, state: TaskState) -> bool:
    return STATE_RANK[state] > STATE_RANK[rec.state]


def project(rec: TaskRecord | None, event: Event) -> TaskRecord | None:
    if rec is None:
        if isinstance(event, TaskRequestedEvent):
            return _new_record(event)
        if isinstance(event, TaskReadyEvent):
            rec = _new_record(event)
        else:
            raise RecordMissing(event.subject)
    elif isinstance(event, TaskRequestedEvent):
        return None
    return _apply(rec, event)


def _apply(rec: TaskRecord, event: Event) -> TaskRecord | None:
    upd: dict[str, object] = {"updated_at": max(rec.updated_at, event.time)}
    if isinstance(event, TaskReadyEvent):
        if not _advance(rec, "ready"):
            return None
        upd |= {"state": "ready", "network": event.data.model.entry_id,
                "task_type": event.data.task_type}
    elif isinstance(event, TaskRejectedEvent):
        if not _advance(rec, "rejected"):
            return None
        upd |= {"state": "rejected", "errors": event.data.errors}
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
        if rec.state in TERMINAL_STATES:
            return None
        upd |= {"state": "completed", "metrics": event.data.metrics,
                "artifacts": event.data.artifacts, "duration_s": event.data.duration_s}
    elif isinstance(event, TaskFailedEvent):
        if rec.state in TERMINAL_STATES:
            return None
        err = ErrorDetail(field="task", code=event.data.code, message=event.data.message)
        upd |= {"state": "failed", "errors": [*rec.errors, err]}
    elif isinstance(event, TaskCancelledEvent):
        if rec.state in TERMINAL_STATES:
            return None
        upd |= {"state": "cancelled"}
    elif isinstance(event, TaskCancelRequestedEvent):
        if rec.state in TERMINAL_STATES or rec.cancel_requested:
            return None
        upd |= {"cancel_requested": True}
    else:  # pragma: no cover - the union is exhaustive
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
    except (nats.errors.Error, TimeoutError) as exc:
        raise TransientError("kv_unavailable", str(exc)) from exc
    return []
