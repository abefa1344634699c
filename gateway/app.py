"""Wiring of the gateway: settings → NATS → aiohttp application."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import TypeVar

from aiohttp import web
from nats.js import JetStreamContext

from gateway import (
    artifacts,
    datasets,
    events,
    observe,
    openapi,
    presets,
    runners,
    runs,
    webhooks,
    zoo,
)
from gateway.app_keys import (
    ADMISSIONS,
    CONNECTED,
    DELIVERIES,
    IDEMPOTENCY,
    JS,
    LIMITER,
    REPLAY,
    SETTINGS,
    STORE,
    TASK_LISTS,
    TASKS,
    TENANTS,
    WEBHOOK_SUBS,
)
from gateway.auth import KEYS, KeyCache, auth_middleware
from gateway.errors import error_middleware
from gateway.flows import routes as flow_routes
from gateway.idempotency import IdempotencyStore
from gateway.ratelimit import RateLimiter
from gateway.tasks import routes
from gateway.tenancy import ApiKeyRepo, ReplayGuard, TenantRepo
from infra.admission import AdmissionRepo
from infra.bus.topology import connect
from infra.kv import DeliveryRepo, TaskRepo, WebhookRepo
from infra.kv.listing import TASKS as TASK_KIND
from infra.kv.listing import ListingIndex
from infra.security.sealing import load_seal_key
from infra.settings import Settings
from infra.store import open_store
from infra.telemetry.metrics import setup_process

log = logging.getLogger("radtrain.gateway")
R = TypeVar("R")


def create_app(settings: Settings) -> web.Application:
    # Outermost first: observe sees final statuses, errors turn auth failures into JSON.
    app = web.Application(middlewares=[observe.observe_middleware, error_middleware,
                                       auth_middleware],
                          client_max_size=settings.max_request_bytes)
    app[SETTINGS] = settings
    app[LIMITER] = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
    app[STORE] = open_store(settings, ensure_bucket=False)
    app.cleanup_ctx.append(_nats_ctx)
    app.add_routes(routes)
    for module in (artifacts, events, webhooks, observe, openapi, datasets, runs, zoo, presets,
                   runners):
        app.add_routes(module.routes)
    app.add_routes(flow_routes)
    return app


async def _nats_ctx(app: web.Application) -> AsyncIterator[None]:
    nc, js = await connect(app[SETTINGS], name="radtrain-gateway")
    app[CONNECTED] = nc
    app[JS] = js
    app[TASKS] = await _open_tasks(js)
    seal = load_seal_key(app[SETTINGS])  # the secret buckets trust only sealed records
    app[KEYS] = KeyCache(await _wait_open(partial(ApiKeyRepo.open, seal_key=seal), js),
                         app[SETTINGS].api_key_cache_s)
    app[TENANTS] = await _wait_open(partial(TenantRepo.open, seal_key=seal), js)
    app[REPLAY] = await _wait_open(ReplayGuard.open, js)
    app[WEBHOOK_SUBS] = await _wait_open(partial(WebhookRepo.open, seal_key=seal), js)
    app[DELIVERIES] = await _wait_open(DeliveryRepo.open, js)
    app[IDEMPOTENCY] = await _wait_open(IdempotencyStore.open, js)
    app[ADMISSIONS] = await _wait_open(AdmissionRepo.open, js)
    app[TASK_LISTS] = await _wait_open(partial(ListingIndex.open, kind=TASK_KIND), js)
    yield
    await nc.drain()


async def _open_tasks(js, attempts: int = 120) -> TaskRepo:  # type: ignore[no-untyped-def]
    """The KV bucket appears when ``infra apply`` has run; wait for it instead of failing."""
    for _ in range(attempts):
        try:
            return await TaskRepo.open(js)
        except Exception as exc:  # BucketNotFoundError, or NATS not ready yet
            log.info("waiting for KV bucket 'tasks': %r", exc)
            await asyncio.sleep(0.5)
    return await TaskRepo.open(js)


async def _wait_open(opener: Callable[[JetStreamContext], Awaitable[R]], js: JetStreamContext,
                     attempts: int = 60) -> R:
    """Like the tasks bucket: ``infra apply`` creates the buckets, possibly just now."""
    for _ in range(attempts):
        try:
            return await opener(js)
        except Exception as exc:
            log.info("waiting for a KV bucket: %r", exc)
            await asyncio.sleep(0.5)
    return await opener(js)


def main() -> None:
    settings = Settings()
    setup_process("gateway", settings)  # /metrics is served by the app itself
    web.run_app(create_app(settings), host=settings.gateway_host, port=settings.gateway_port,
                print=lambda msg: log.info("%s", msg), handle_signals=True)
