"""Status projector: events → TaskRecord, forward-only.

``project`` is pure: given the current record (or none) and one event it
returns the new record, or ``None`` when the event changes nothing (a
duplicate, a replay, an event that arrives after a terminal state). That is
what makes redelivery and replay harmless. ``handle_event`` is the
projector consumer's glue around it: one compare-and-set on KV ``tasks``, tried
first on the record this process last wrote for the task (:class:`RecordCache`),
so the usual task (requested, then rejected or ready) costs no read at all.

Generations (the ``taskgeneration`` extension attribute): ``rejected``,
``failed``, ``cancelled`` and ``completed`` are terminal whatever arrives
after them, except a ``task.redriven`` of a newer generation, which on-call
publishes to re-open the task (``radtrain dlq redrive``, ``replay --force``).
Events of an older generation than the record's change nothing; an event of a
newer one that is not the ``task.redriven`` itself waits for it (retried).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

import nats.errors

from infra.errors import KVConflict, TransientError
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
                          parent_task_id=req.parent_task_id, **common)
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


class RecordCache:
    """The record this process last wrote or read for each recent task, with its KV
    revision: a guess for the next compare-and-set, never an answer on its own.

    Safe because a guess is only ever used through a compare-and-set on its
    revision: the write succeeds only if the key is still at that revision, that is
    if the guess *is* the current record; when another writer (a second projector,
    on-call) got there first the write fails and :func:`fold` reads KV and decides
    again. A guess that says "nothing to write" or "not yet" is not trusted either.
    """

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._items: OrderedDict[str, tuple[TaskRecord, int]] = OrderedDict()

    def get(self, task_id: str) -> tuple[TaskRecord, int] | None:
        return self._items.get(task_id)

    def put(self, task_id: str, record: TaskRecord, revision: int) -> None:
        self._items[task_id] = (record, revision)
        self._items.move_to_end(task_id)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def drop(self, task_id: str) -> None:
        self._items.pop(task_id, None)


NO_RECORD: tuple[None, int] = (None, 0)
"""The guess for a task's first event: no record yet (compare-and-set at revision 0)."""


async def fold(tasks: TaskRepo, task_id: str, event: Event, cache: RecordCache,
               attempts: int = 20) -> TaskRecord | None:
    """``project`` the event onto the task's record and write it by compare-and-set: the
    written record, or ``None`` when the event changes nothing. Starts from the cached
    record (a ``task.requested``: from no record); a lost write, or a guess that writes
    nothing, reads the record from KV and decides again."""
    guess: tuple[TaskRecord | None, int] | None = cache.get(task_id)
    if guess is None and isinstance(event, TaskRequestedEvent):
        guess = NO_RECORD
    for _ in range(attempts):
        guessed, current = guess is not None, guess or (await tasks.get(task_id) or NO_RECORD)
        guess = None
        try:
            new = project(current[0], event)
        except (RecordMissing, GenerationAhead):
            if guessed:
                continue
            raise
        if new is None:
            if guessed:
                continue
            if current[0] is not None:
                cache.put(task_id, current[0], current[1])
            return None
        revision = await tasks.kv.compare_and_set(task_id, new, current[1])
        if revision is not None:
            cache.put(task_id, new, revision)
            return new
        cache.drop(task_id)
    raise KVConflict(tasks.kv.bucket, task_id, attempts)


async def handle_event(event: Event, delivery: Delivery, *, tasks: TaskRepo,
                       cache: RecordCache | None = None) -> list[Envelope]:
    """Fold one event into the task's KV record (compare-and-set); publishes nothing."""
    del delivery
    try:
        await fold(tasks, event.subject, event, cache or RecordCache(size=0))
    except RecordMissing as exc:
        raise TransientError("record_missing", f"no record yet for {exc}") from exc
    except GenerationAhead as exc:
        raise TransientError("generation_ahead", str(exc)) from exc
    except (nats.errors.Error, TimeoutError) as exc:
        raise TransientError("kv_unavailable", str(exc)) from exc
    return []
