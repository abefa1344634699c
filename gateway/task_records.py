"""Reading task records for the route modules: one task as its tenant may see it, or the
records of several ids in one batched read. Apart from the routes so that every route
module (tasks, runs, search) can use them without importing another's routes."""

from __future__ import annotations

import asyncio

from aiohttp import web
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from gateway.app_keys import JS, TASK_LISTS, TASKS
from gateway.auth import tenant_of
from gateway.errors import ApiError
from infra.bus.topology import KV_TASKS, TASKS_STREAM
from schemas.common import is_identifier
from schemas.events import TaskRequestedEvent, parse_event
from schemas.record import TaskRecord


async def _record_from_stream(js: JetStreamContext, task_id: str) -> TaskRecord | None:
    """Between the 202 and the projector's first write, the stream already knows the task."""
    try:
        raw = await js.get_last_msg(TASKS_STREAM, f"tasks.requested.{task_id}")
    except NotFoundError:
        return None
    event = parse_event(raw.data or b"")
    if not isinstance(event, TaskRequestedEvent):
        return None
    d = event.data
    return TaskRecord(task_id=task_id, tenant=d.tenant, name=d.name, state="requested",
                      flow=d.flow, task_type=d.task_type, dataset_id=d.dataset_id,
                      created_at=event.time, updated_at=event.time)


async def task_record_for(request: web.Request) -> TaskRecord:
    """The ``{task_id}`` of the path as the caller's tenant may see it, or a 404."""
    task_id = request.match_info["task_id"]
    not_found = ApiError(404, "not_found", f"task {task_id!r} not found")
    if not is_identifier(task_id):
        raise not_found
    found = await request.app[TASKS].get(task_id)
    record = found[0] if found else await _record_from_stream(request.app[JS], task_id)
    if record is None or record.tenant != tenant_of(request):
        raise not_found
    return record


async def records_of(request: web.Request, task_ids: list[str]) -> list[TaskRecord]:
    """The records of ``task_ids`` in that order, in one batched direct get (else one
    get each); a task without a record (yet) is left out."""
    direct = request.app[TASK_LISTS].direct
    raw = await direct.get_last(KV_TASKS, task_ids) if direct else None
    if raw is not None:
        return [TaskRecord.model_validate_json(raw[t]) for t in task_ids if t in raw]
    repo = request.app[TASKS]
    found = await asyncio.gather(*(repo.get(task_id) for task_id in task_ids))
    return [f[0] for f in found if f is not None]
