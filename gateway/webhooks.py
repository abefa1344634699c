"""``/v1/webhooks``: a tenant's subscriptions to its tasks' status events, and their deliveries.

Everything is looked up under the caller's tenant (KV key ``<tenant>.<id>``),
so another tenant's subscription is simply not found. The secret is shown
once, at creation or rotation; receivers verify with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from datetime import UTC, datetime
from urllib.parse import urlsplit

import nats.errors
from aiohttp import web
from nats.js import JetStreamContext
from pydantic import BaseModel

from gateway.app_keys import DELIVERIES, SETTINGS, WEBHOOK_SUBS
from gateway.auth import tenant_of
from gateway.body import int_param, read_model
from gateway.errors import ApiError
from infra.bus.topology import KV_WEBHOOK_BREAKERS
from infra.kv import KVRepository
from infra.security.address_guard import BlockedAddress, check_url, literal_ip, resolve_checked
from infra.security.signing import new_secret
from schemas.api import ErrorItem
from schemas.common import is_identifier
from schemas.tenancy import SigningSecret
from schemas.webhooks import (
    DeliveryPage,
    EndpointBreaker,
    Webhook,
    WebhookCreate,
    WebhookPage,
    WebhookSecret,
    WebhookSubscription,
)

MAX_PER_TENANT = 100
MAX_PAGE = 500

routes = web.RouteTableDef()
BREAKERS = web.AppKey("webhook_breakers", KVRepository[EndpointBreaker])
"""Each subscription's circuit breaker, written by the deliverer (handlers/deliverer.py)."""


async def open_breakers(js: JetStreamContext) -> KVRepository[EndpointBreaker]:
    return await KVRepository.open(js, KV_WEBHOOK_BREAKERS, EndpointBreaker)


async def _public(request: web.Request, sub: WebhookSubscription) -> Webhook:
    """The subscription as clients see it, with its circuit breaker's state (closed when
    it never failed; also when KV cannot say right now: the listing still answers)."""
    breaker = None
    try:
        breaker = await request.app[BREAKERS].get(f"{sub.tenant}.{sub.id}")
    except (nats.errors.Error, TimeoutError):
        pass
    return sub.public(breaker)


def _json(model: BaseModel, status: int = 200, headers: dict[str, str] | None = None
          ) -> web.Response:
    return web.json_response(text=model.model_dump_json(), status=status, headers=headers)


async def _subscription(request: web.Request) -> WebhookSubscription:
    webhook_id = request.match_info["webhook_id"]
    sub = None
    if is_identifier(webhook_id):
        sub = await request.app[WEBHOOK_SUBS].get(tenant_of(request), webhook_id)
    if sub is None:
        raise ApiError(404, "not_found", f"webhook {webhook_id!r} not found")
    return sub


async def _check_target(url: str, allow_private: bool) -> None:
    """Early feedback only: the deliverer checks the resolved address at every attempt."""
    parts = urlsplit(url)
    try:
        check_url(url, allow_private)
        if parts.hostname and literal_ip(parts.hostname) is None:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            await asyncio.wait_for(resolve_checked(parts.hostname, port, allow_private), 2.0)
    except BlockedAddress as exc:
        raise ApiError(422, "validation_error", f"url refused: {exc}",
                       [ErrorItem(field="url", message=str(exc))]) from None
    except (OSError, TimeoutError):
        pass  # does not resolve (yet): not an error at subscription time


@routes.post("/v1/webhooks")
async def create_webhook(request: web.Request) -> web.Response:
    body = await read_model(request, WebhookCreate)
    tenant, settings = tenant_of(request), request.app[SETTINGS]
    url = str(body.url)
    await _check_target(url, settings.webhooks_allow_private)
    repo = request.app[WEBHOOK_SUBS]
    if len(await repo.list(tenant)) >= MAX_PER_TENANT:
        raise ApiError(409, "limit_reached", f"at most {MAX_PER_TENANT} webhooks per tenant")
    now, secret = datetime.now(UTC), new_secret()
    sub = WebhookSubscription(
        id="wh" + secrets.token_hex(8), tenant=tenant, url=url, event_types=body.event_types,
        description=body.description, created_at=now,
        secrets=[SigningSecret(secret=secret, created_at=now)])
    await repo.put(sub)
    return _json(WebhookSecret(webhook=sub.public(), secret=secret), 201,
                 {"Location": f"/v1/webhooks/{sub.id}"})


@routes.get("/v1/webhooks")
async def list_webhooks(request: web.Request) -> web.Response:
    limit = int_param(request, "limit", 50, MAX_PAGE)
    offset = int_param(request, "offset", 0, 10**9)
    subs = await request.app[WEBHOOK_SUBS].list(tenant_of(request))
    page = subs[offset:offset + limit]
    items = list(await asyncio.gather(*(_public(request, s) for s in page)))
    return _json(WebhookPage(items=items, total=len(subs)))


@routes.get("/v1/webhooks/{webhook_id}")
async def get_webhook(request: web.Request) -> web.Response:
    return _json(await _public(request, await _subscription(request)))


@routes.delete("/v1/webhooks/{webhook_id}")
async def delete_webhook(request: web.Request) -> web.Response:
    """Pending retries stop at their next attempt: they re-read the subscription."""
    sub = await _subscription(request)
    await request.app[WEBHOOK_SUBS].delete(sub.tenant, sub.id)
    with contextlib.suppress(nats.errors.Error, TimeoutError):
        await request.app[BREAKERS].delete(f"{sub.tenant}.{sub.id}")
    return web.Response(status=204)


@routes.post("/v1/webhooks/{webhook_id}/rotate-secret")
async def rotate_secret(request: web.Request) -> web.Response:
    """A new secret signs from now on; the previous one too, for the overlap setting."""
    sub = await _subscription(request)
    rotated = await request.app[WEBHOOK_SUBS].rotate(
        sub.tenant, sub.id, request.app[SETTINGS].webhook_secret_overlap_s)
    if rotated is None:
        raise ApiError(404, "not_found", f"webhook {sub.id!r} not found")
    return _json(WebhookSecret(webhook=await _public(request, rotated[0]), secret=rotated[1]))


@routes.get("/v1/webhooks/{webhook_id}/deliveries")
async def list_deliveries(request: web.Request) -> web.Response:
    """Newest first, each with every attempt (status, error, duration, next retry)."""
    sub = await _subscription(request)
    limit = int_param(request, "limit", 50, MAX_PAGE)
    offset = int_param(request, "offset", 0, 10**9)
    found = await request.app[DELIVERIES].list(sub.tenant, sub.id)
    return _json(DeliveryPage(items=found[offset:offset + limit], total=len(found)))
