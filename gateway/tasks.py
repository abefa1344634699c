"""HTTP routes. Thin: validate, publish or read, answer. No training, no catalog logic."""

from __future__ import annotations

import os
import uuid

import nats.errors
from aiohttp import web

from gateway.app_keys import (
    ADMISSIONS,
    CONNECTED,
    IDEMPOTENCY,
    JS,
    KEYED_IDS,
    SETTINGS,
    TASK_LISTS,
)
from gateway.artifacts import public_record
from gateway.auth import tenant_of
from gateway.body import int_param, read_model
from gateway.errors import ApiError
from gateway.idempotency import (
    StoredResponse,
    request_key,
    submit_keyed,
    unavailable,
)
from gateway.keyed_ids import KeyedRequest, submit_derived
from gateway.observe import traceparent_of
from gateway.paging import cursor_param
from gateway.search import children_page
from gateway.task_records import records_of, task_record_for
from infra.admission import Admission, admit
from infra.bus.publish import publish_event, publish_first_event
from infra.bus.topology import streams_exist
from infra.telemetry.logging import task_id_var
from schemas.admission import Ingress, request_digest
from schemas.api import TaskAccepted, TaskPage
from schemas.common import is_identifier
from schemas.events import TaskRequestedEvent
from schemas.record import STATE_RANK
from schemas.tasks import TaskRequest, TaskRequested

MAX_PAGE = 500

routes = web.RouteTableDef()


def new_task_id() -> str:
    """A new random id: a request without an Idempotency-Key, or a key's next task after
    its window (a key's first task has an id derived from it: gateway/keyed_ids.py)."""
    return uuid.uuid4().hex


def accepted(task_id: str) -> StoredResponse:
    return StoredResponse(status=202, body=TaskAccepted(task_id=task_id).model_dump(),
                          headers={"Location": f"/v1/tasks/{task_id}"})


def refusal(admission: Admission, task_id: str) -> ApiError | None:
    """The answer to a refused admission; ``None`` when admitted (or a retry)."""
    if admission.outcome == "conflict":
        return ApiError(409, "task_id_conflict",
                        f"task {task_id!r} was already requested with a different body; "
                        "use a new task id for a new task")
    if admission.outcome == "unavailable":  # never say that it exists, nor whose it is
        return ApiError(409, "task_id_unavailable",
                        f"task id {task_id!r} is not available; use another task id")
    return None


async def admit_and_publish(request: web.Request, event: TaskRequestedEvent,
                            ingress: Ingress, *, minted: bool = False,
                            digest: str | None = None) -> None:
    """Admission, then ``tasks.requested.<id>``: 409 when refused, 503 when NATS is not
    there (nothing refused is published; a retry publishes only what the stream lacks).

    ``minted``: this request drew the id, which nobody else can name before its 202, so
    it is published unclaimed: one JetStream write (infra/admission.py judges whoever
    names it later by the owner its ``task.requested`` or its record names)."""
    js = request.app[JS]
    try:
        if minted:
            await publish_event(js, event)
            return
        admission = await admit(request.app[ADMISSIONS], js, event, ingress, digest=digest)
        problem = refusal(admission, event.data.task_id)
        if problem is not None:
            raise problem
        if admission.publish:
            await publish_event(js, event)
    except (nats.errors.Error, TimeoutError) as exc:
        raise unavailable(exc) from exc


def accepted_now(task_id: str) -> web.Response:
    """The 202 of a new task, encoded once by its contract (the hot path's answer)."""
    return web.Response(body=TaskAccepted(task_id=task_id).model_dump_json().encode(),
                        status=202, content_type="application/json",
                        headers={"Location": f"/v1/tasks/{task_id}"})


@routes.post("/v1/tasks")
async def submit_task(request: web.Request) -> web.Response:
    """Validated once (the body straight into :class:`TaskRequest`). Its digest (the
    costliest part of a plain request when it was computed for every one) only with an
    Idempotency-Key: it serves both the key's record and a replay's admission."""
    req = await read_model(request, TaskRequest)
    tenant = tenant_of(request)
    key = request_key(request)
    if not getattr(request.app[CONNECTED], "is_connected", False):
        # Fail fast: a publish now would wait for its ack timeout, buffered in the client.
        raise unavailable(ConnectionError("not connected to NATS"))
    digest: str | None = None  # set below, with a key only: read by publish when called
    traceparent = traceparent_of(request)

    def event_for(task_id: str) -> TaskRequestedEvent:
        task_id_var.set(task_id)  # this request's context only: tags its log lines
        # The request's fields are validated already: validating a dict of them (nested
        # models pass as they are) costs a third of re-dumping and re-parsing them.
        data = TaskRequested.model_validate({**req.__dict__, "task_id": task_id,
                                             "tenant": tenant, "idempotency_key": key})
        return TaskRequestedEvent(source="radtrain/gateway", subject=task_id,
                                  traceparent=traceparent, data=data)

    async def publish(task_id: str, won: bool = True) -> None:
        """``won``: this request drew ``task_id`` (a replay's id is judged by admission)."""
        await admit_and_publish(request, event_for(task_id), "http", minted=won,
                                digest=digest)

    if key is None:
        task_id = new_task_id()
        await publish(task_id)
        return accepted_now(task_id)
    digest = request_digest(req)

    ids = request.app[KEYED_IDS]
    if ids is None:
        return await submit_keyed(request.app[IDEMPOTENCY], tenant, key, new_task_id(),
                                  digest, ttl_s=request.app[SETTINGS].idempotency_ttl_s,
                                  answer=accepted, publish=publish)

    async def publish_first(task_id: str) -> bool:
        return await publish_first_event(request.app[JS], event_for(task_id))

    keyed = KeyedRequest(tenant, key, digest, publish_first=publish_first, publish=publish,
                         answer=accepted, draw_id=new_task_id)
    return await submit_derived(ids, request.app[JS], request.app[IDEMPOTENCY], keyed)


@routes.get("/v1/tasks/{task_id}")
async def get_task(request: web.Request) -> web.Response:
    record = public_record(await task_record_for(request))  # no server paths (issue 17)
    return web.json_response(text=record.model_dump_json())


@routes.get("/v1/tasks")
async def list_tasks(request: web.Request) -> web.Response:
    """Newest first from the tenant's numbered list (infra/kv/listing.py): O(limit)
    direct gets whatever the history. With ``state``, newest into that state first."""
    limit = int_param(request, "limit", 50, MAX_PAGE)
    offset = int_param(request, "offset", 0, 10**9)
    state = request.query.get("state")
    if state is not None and state not in STATE_RANK:
        raise ApiError(400, "invalid_query", f"state must be one of {sorted(STATE_RANK)}")
    parent = request.query.get("parent")
    if parent is not None:  # issue 18: a search's trials, in trial order
        if not is_identifier(parent):
            raise ApiError(400, "invalid_query", "parent must be a task id")
        return await children_page(request, parent, limit, offset)
    cursor = cursor_param(request, state, offset)
    tenant = tenant_of(request)
    try:
        page = await request.app[TASK_LISTS].page(tenant, state=state, limit=limit,
                                                  offset=offset, cursor=cursor)
        found = await records_of(request, page.ids)
    except (nats.errors.Error, TimeoutError) as exc:
        raise unavailable(exc) from exc
    # The lists follow the records a moment later: show each task as it is now.
    records = [r for r in found if r.tenant == tenant and (state is None or r.state == state)]
    body = TaskPage(items=[public_record(r) for r in records], total=page.total,
                    next=page.next.encode() if page.next else None)
    return web.json_response(text=body.model_dump_json())


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    """Alive; ``pid`` names the process that answered (one of ``gateway_workers``)."""
    return web.json_response({"status": "ok", "pid": os.getpid()})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    nc = request.app[CONNECTED]
    ok = bool(getattr(nc, "is_connected", False)) and await streams_exist(request.app[JS])
    if not ok:
        raise ApiError(503, "not_ready", "NATS not connected or streams missing")
    return web.json_response({"status": "ready"})
