"""A task's run: cancel it, list its artifacts, follow its events live (SSE).

Every route answers 404 for a task of another tenant, exactly like a missing
one. State comes from the TASKS stream where freshness matters (is it
finished? what happened so far?) and from KV otherwise.

* ``POST /v1/tasks/{id}/cancel`` publishes ``task.cancel_requested`` (msg id
  ``<id>:cancel_requested``, so a repeated click is one event) and answers
  202; the runner stops within a few seconds and publishes ``task.cancelled``.
* ``GET /v1/tasks/{id}/artifacts`` lists the files of ``task.completed`` with
  their sha256 and a download link (the store's presigned URL, and the
  gateway's own tenant-checked route).
* ``GET /v1/tasks/{id}/events`` replays the task's events and follows them
  as Server-Sent Events (``id`` = stream sequence, so ``Last-Event-ID``
  resumes), closing after a terminal event.
"""

from __future__ import annotations

import asyncio
import contextlib

import nats.errors
from aiohttp import web
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from pydantic import ValidationError

from gateway.app_keys import API_KEY_ID, JS, STORE
from gateway.artifacts import public_event
from gateway.body import require_json
from gateway.errors import ApiError, from_validation
from gateway.limits import stream_slot
from gateway.task_records import task_record_for
from infra.bus.dead_letters import finished, generation_of
from infra.bus.publish import publish_event
from infra.bus.topology import TASKS_STREAM
from schemas.api import ArtifactLink, ArtifactPage, CancelAccepted, CancelRequest
from schemas.events import TaskCancelRequested, TaskCancelRequestedEvent
from schemas.record import TaskRecord

routes = web.RouteTableDef()
FINAL_EVENTS = ("completed", "failed", "cancelled", "rejected")
KEEPALIVE_S = 15.0
PRESIGN_S = 3600




async def _final_event(request: web.Request, task_id: str, generation: int) -> str | None:
    """The stream knows a task ended before the KV projection does; an end of an earlier
    generation (before on-call re-opened the task) does not count."""
    return await finished(request.app[JS], task_id, generation=generation)


@routes.post("/v1/tasks/{task_id}/cancel")
async def cancel_task(request: web.Request) -> web.Response:
    record = await task_record_for(request)
    raw = await request.read()
    if raw.strip():
        require_json(request)
    try:
        body = CancelRequest.model_validate_json(raw) if raw.strip() else CancelRequest()
    except ValidationError as exc:
        raise from_validation(exc) from exc
    final = record.state if record.state in FINAL_EVENTS else await _final_event(
        request, record.task_id, record.generation)
    if final is not None:
        raise ApiError(409, "conflict", f"task {record.task_id!r} is already {final}")
    who = request.get(API_KEY_ID)
    event = TaskCancelRequestedEvent(
        source="radtrain/gateway", subject=record.task_id,
        traceparent=request.headers.get("traceparent"), taskgeneration=record.generation,
        data=TaskCancelRequested(task_id=record.task_id, reason=body.reason,
                                 by=f"api-key:{who}" if who else f"tenant:{record.tenant}"))
    try:
        await publish_event(request.app[JS], event)
    except (nats.errors.Error, TimeoutError) as exc:
        raise ApiError(503, "unavailable", "event bus unavailable, retry later",
                       headers={"Retry-After": "1"}) from exc
    accepted = CancelAccepted(task_id=record.task_id, state=record.state)
    return web.json_response(text=accepted.model_dump_json(), status=202)


@routes.get("/v1/tasks/{task_id}/artifacts")
async def list_artifacts(request: web.Request) -> web.Response:
    record = await task_record_for(request)
    store = request.app[STORE]
    items = []
    for art in record.artifacts:
        url = await asyncio.to_thread(store.presign, art.key, PRESIGN_S)
        if not url.startswith(("https://", "http://")):  # a local store's file:// path is
            url = f"/v1/tasks/{record.task_id}/artifacts/{art.name}"  # the server's own
        items.append(ArtifactLink(name=art.name, key=art.key, sha256=art.sha256, size=art.size,
                                  url=url,
                                  href=f"/v1/tasks/{record.task_id}/artifacts/{art.name}"))
    page = ArtifactPage(items=items, total=len(items))
    return web.json_response(text=page.model_dump_json())


def _start_after(request: web.Request) -> int | None:
    raw = request.headers.get("Last-Event-ID")
    if raw is None:
        return None
    try:
        return max(0, int(raw))
    except ValueError:
        raise ApiError(400, "invalid_header", "Last-Event-ID must be a stream sequence") from None


@routes.get("/v1/tasks/{task_id}/events")
async def task_events(request: web.Request) -> web.StreamResponse:
    """The task's history, then live events, as ``text/event-stream``."""
    record = await task_record_for(request)
    after = _start_after(request)
    with stream_slot(request):  # issue 17: capped per API key and in total (429)
        return await _stream_events(request, record, after)


async def _stream_events(request: web.Request, record: TaskRecord,
                         after: int | None) -> web.StreamResponse:
    config = ConsumerConfig(inactive_threshold=60.0)
    if after is None:
        config.deliver_policy = DeliverPolicy.ALL
    else:
        config.deliver_policy, config.opt_start_seq = DeliverPolicy.BY_START_SEQUENCE, after + 1
    sub = await request.app[JS].subscribe(f"tasks.*.{record.task_id}", stream=TASKS_STREAM,
                                          ordered_consumer=True, config=config)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    try:
        await _pump(sub, resp, record.generation)
    except (ConnectionResetError, asyncio.CancelledError):
        pass  # the client went away
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return resp


async def _pump(sub: JetStreamContext.PushSubscription, resp: web.StreamResponse,
                generation: int) -> None:
    """Send until the end of the task's current generation: the end of an earlier one
    (a failure on-call has since redriven) is history, not the end of the stream."""
    while True:
        try:
            msg = await sub.next_msg(timeout=KEEPALIVE_S)
        except TimeoutError:
            await resp.write(b": keep-alive\n\n")
            continue
        name = msg.subject.split(".")[1]
        seq = msg.metadata.sequence.stream
        data = public_event(msg.data) if name == "completed" else msg.data  # issue 17
        await resp.write(f"id: {seq}\nevent: {name}\ndata: ".encode() + data + b"\n\n")
        if name in FINAL_EVENTS and generation_of(msg.headers, msg.data) >= generation:
            await resp.write_eof()
            return
