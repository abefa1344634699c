"""``POST /v1/events``: upstream systems send a signed ``task.requested`` CloudEvent.

Two proofs: the bearer key says which tenant calls, and a Standard Webhooks
signature with that tenant's inbound secret says the body is theirs and
recent. A bad signature, a timestamp outside the tolerance or a replayed
``webhook-id`` is a 401, and nothing is published. The id is remembered
(KV with a TTL of twice the tolerance) only once everything else holds, and
forgotten again if the bus refuses the event, so a sender may retry.
"""

from __future__ import annotations

import time

import nats.errors
from aiohttp import web

from gateway.app_keys import JS, REPLAY, SETTINGS, TENANTS
from gateway.auth import Unauthorized, tenant_of
from gateway.body import require_json
from gateway.errors import ApiError
from gateway.observe import traceparent_of
from infra.bus.publish import publish_event
from infra.security.signing import SignatureError, verify
from infra.telemetry.logging import task_id_var
from infra.telemetry.tracing import parse_traceparent
from schemas.api import ErrorItem, TaskAccepted
from schemas.events import TaskRequestedEvent

EVENT_TYPES = ("application/cloudevents+json", "application/json")

routes = web.RouteTableDef()


async def _verified_body(request: web.Request, tenant: str) -> tuple[bytes, str]:
    require_json(request, EVENT_TYPES)
    body = await request.read()
    secrets = await request.app[TENANTS].inbound_secrets(tenant)
    if not secrets:
        raise Unauthorized(f"tenant {tenant!r} has no inbound event secret; "
                           "create one with `radtrain keys event-secret`")
    try:
        msg_id, _ = verify(secrets, request.headers, body, now=time.time(),
                           tolerance_s=request.app[SETTINGS].inbound_tolerance_s)
    except SignatureError as exc:
        raise Unauthorized(f"event signature refused: {exc}") from None
    return body, msg_id


@routes.post("/v1/events")
async def post_event(request: web.Request) -> web.Response:
    tenant = tenant_of(request)
    body, msg_id = await _verified_body(request, tenant)
    event = TaskRequestedEvent.model_validate_json(body)
    if event.subject != event.data.task_id:
        raise ApiError(422, "validation_error", "subject must equal data.task_id",
                       [ErrorItem(field="subject", message="must equal data.task_id")])
    if event.data.tenant != tenant:
        raise ApiError(403, "tenant_mismatch",
                       f"data.tenant {event.data.tenant!r} is not the caller's tenant")
    task_id_var.set(event.subject)
    replay = request.app[REPLAY]
    if not await replay.first_time(tenant, msg_id):
        raise Unauthorized(f"webhook-id {msg_id!r} was already used (replay)")
    if parse_traceparent(event.traceparent) is None:
        event = event.model_copy(update={"traceparent": traceparent_of(request)})
    try:
        await publish_event(request.app[JS], event)
    except (nats.errors.Error, TimeoutError) as exc:
        await replay.forget(tenant, msg_id)
        raise ApiError(503, "unavailable", f"event bus unavailable, retry later: {exc!r}") from exc
    return web.json_response(
        TaskAccepted(task_id=event.subject).model_dump(), status=202,
        headers={"Location": f"/v1/tasks/{event.subject}"})
