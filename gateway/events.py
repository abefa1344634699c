"""``POST /v1/events``: upstream systems send a signed ``task.requested`` CloudEvent.

Two proofs: the bearer key says which tenant calls, and a Standard Webhooks
signature with that tenant's inbound secret says the body is theirs and
recent. A bad signature, a timestamp outside the tolerance or a replayed
``webhook-id`` is a 401, and nothing is published. The id is remembered
(KV with a TTL of twice the tolerance) only once everything else holds, and
forgotten again if the bus refuses the event, so a sender may retry.

CloudEvents in either content mode: structured (``application/cloudevents+json``
or ``application/json``, the whole event is the body) or binary (``ce-*``
headers, the body is ``data``, ``Content-Type`` its media type); the signature
covers the body as sent. The tenant is the key's: ``data.tenant`` is filled in
when absent and a different one is a 403. Extension attributes and
``dataschema`` stay on the published ``task.requested``. Then admission
(infra/admission.py): a task id of another tenant, or of this tenant with
another body, is a 409; the same request again is answered 202 again.
"""

from __future__ import annotations

import time

from aiohttp import web

from gateway.app_keys import REPLAY, SETTINGS, TENANTS
from gateway.auth import Unauthorized, tenant_of
from gateway.body import require_json
from gateway.errors import ApiError
from gateway.idempotency import respond
from gateway.observe import traceparent_of
from gateway.tasks import accepted, admit_and_publish
from infra.admission import InconsistentEvent, TenantMismatch, inbound_event
from infra.security.signing import SignatureError, verify
from infra.telemetry.logging import task_id_var
from infra.telemetry.tracing import parse_traceparent
from schemas.api import ErrorItem
from schemas.cloudevents import STRUCTURED_MEDIA, CloudEventFormatError, event_dict, is_binary

EVENT_TYPES = (STRUCTURED_MEDIA, "application/json")

routes = web.RouteTableDef()


async def _verified_body(request: web.Request, tenant: str) -> tuple[bytes, str]:
    if not is_binary(request.headers):  # binary mode: Content-Type is data's (any JSON)
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
    try:
        event = inbound_event(event_dict(request.headers, body), tenant)
    except TenantMismatch as exc:
        raise ApiError(403, "tenant_mismatch", str(exc)) from None
    except InconsistentEvent as exc:
        raise ApiError(422, "validation_error", str(exc),
                       [ErrorItem(field="subject", message="must equal data.task_id")]) from None
    except CloudEventFormatError as exc:
        raise ApiError(400, "invalid_cloudevent", str(exc)) from None
    task_id_var.set(event.subject)
    replay = request.app[REPLAY]
    if not await replay.first_time(tenant, msg_id):
        raise Unauthorized(f"webhook-id {msg_id!r} was already used (replay)")
    if parse_traceparent(event.traceparent) is None:
        event = event.model_copy(update={"traceparent": traceparent_of(request)})
    try:
        await admit_and_publish(request, event, "events")
    except ApiError as exc:
        if exc.status == 503:  # nothing was decided: the sender may retry this message
            await replay.forget(tenant, msg_id)
        raise
    return respond(accepted(event.subject), replayed=False)
