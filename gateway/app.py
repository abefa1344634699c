"""Wiring of the gateway: settings → NATS → aiohttp application."""

from __future__ import annotations

import argparse
import logging
from collections.abc import AsyncIterator
from functools import partial

from aiohttp import web

from gateway import (
    artifacts,
    datasets,
    events,
    limits,
    observe,
    openapi,
    presets,
    previews,
    runners,
    runs,
    uploads,
    validate,
    webhooks,
    zoo,
)
from gateway.app_keys import (
    ADMISSIONS,
    CONNECTED,
    DELIVERIES,
    IDEMPOTENCY,
    JS,
    KEYED_IDS,
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
from gateway.console import add_routes as add_console_routes
from gateway.console import console_middleware
from gateway.errors import error_middleware
from gateway.flows import routes as flow_routes
from gateway.idempotency import IdempotencyStore
from gateway.keyed_ids import keyed_ids_for
from gateway.ratelimit import RateLimiter
from gateway.search import routes as search_routes
from gateway.tasks import routes
from gateway.tenancy import ApiKeyRepo, ReplayGuard, TenantRepo
from gateway.workers import Supervisor, watch_parent
from infra.admission import AdmissionRepo
from infra.bus.topology import connect
from infra.event_loop import freeze_startup_heap, loop_factory
from infra.kv import DeliveryRepo, TaskRepo, WebhookRepo
from infra.kv.listing import TASKS as TASK_KIND
from infra.kv.listing import ListingIndex
from infra.kv.ready import open_when_ready
from infra.security.sealing import load_seal_key
from infra.settings import Settings
from infra.store import open_store
from infra.telemetry.metrics import setup_process

log = logging.getLogger("radtrain.gateway")


def create_app(settings: Settings) -> web.Application:
    # Outermost first: observe sees final statuses, errors turn auth failures into JSON.
    # The console's static files are public: console_middleware serves them before auth.
    app = web.Application(middlewares=[observe.observe_middleware, error_middleware,
                                       console_middleware, auth_middleware],
                          client_max_size=settings.max_request_bytes)
    app[SETTINGS] = settings
    app[LIMITER] = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
    app[STORE] = open_store(settings, ensure_bucket=False)
    previews.install(app, settings)  # issue 17: decoding pool, budget, bounded cache
    limits.install(app, sse_per_key=settings.sse_max_per_key, sse_total=settings.sse_max_total,
                   unauth_rate_per_s=settings.unauth_rate_per_s,
                   unauth_burst=settings.unauth_burst)
    app.cleanup_ctx.append(_nats_ctx)
    app.add_routes(routes)
    for module in (artifacts, events, webhooks, observe, openapi, datasets, runs, zoo, presets,
                   runners):
        app.add_routes(module.routes)
    app.add_routes(flow_routes)
    app.add_routes(search_routes)  # issue 18: GET /v1/tasks/{id}/search
    app.add_routes(validate.routes)
    app.add_routes(uploads.routes)
    add_console_routes(app)
    return app


async def _nats_ctx(app: web.Application) -> AsyncIterator[None]:
    nc, js = await connect(app[SETTINGS], name="radtrain-gateway")
    app[CONNECTED] = nc
    app[JS] = js
    app[TASKS] = await open_when_ready(TaskRepo.open, js)
    seal = load_seal_key(app[SETTINGS])  # the secret buckets trust only sealed records
    app[KEYS] = KeyCache(await open_when_ready(partial(ApiKeyRepo.open, seal_key=seal), js),
                         app[SETTINGS].api_key_cache_s)
    app[TENANTS] = await open_when_ready(partial(TenantRepo.open, seal_key=seal), js)
    app[REPLAY] = await open_when_ready(ReplayGuard.open, js)
    app[WEBHOOK_SUBS] = await open_when_ready(partial(WebhookRepo.open, seal_key=seal), js)
    app[DELIVERIES] = await open_when_ready(DeliveryRepo.open, js)
    app[webhooks.BREAKERS] = await open_when_ready(webhooks.open_breakers, js)  # issue 17
    app[IDEMPOTENCY] = await open_when_ready(IdempotencyStore.open, js)
    app[ADMISSIONS] = await open_when_ready(AdmissionRepo.open, js)
    app[KEYED_IDS] = await open_when_ready(
        partial(keyed_ids_for, settings=app[SETTINGS], seal_key=seal), js)
    app[TASK_LISTS] = await open_when_ready(partial(ListingIndex.open, kind=TASK_KIND), js)
    yield
    await nc.drain()


def main(argv: list[str] | None = None) -> None:
    """``python -m gateway``: one gateway process, or with ``gateway_workers`` > 1 the
    supervisor of that many (gateway/workers.py); ``--worker`` is how it starts them."""
    parser = argparse.ArgumentParser(prog="python -m gateway")
    parser.add_argument("--worker", type=int, metavar="INDEX",
                        help="serve as worker INDEX of a supervisor (SO_REUSEPORT)")
    args = parser.parse_args(argv)
    settings = Settings()
    setup_process("gateway", settings)  # /metrics is served by the app itself
    if settings.gateway_workers > 1 and args.worker is None:
        raise SystemExit(Supervisor(settings).run())
    serve(settings, worker=args.worker is not None)


async def _freeze_heap(_: web.Application) -> None:
    freeze_startup_heap()


def serve(settings: Settings, *, worker: bool = False) -> None:
    """Serve until SIGTERM/SIGINT, on uvloop when ``settings.uvloop`` (a large share of
    each request's CPU is the loop's); a worker shares the port and watches its parent."""
    app = create_app(settings)
    app.on_startup.append(_freeze_heap)  # after the NATS context's start: the whole heap
    if worker:
        app.cleanup_ctx.append(watch_parent)
    # access_log=None: observe_middleware logs every request already.
    web.run_app(app, host=settings.gateway_host, port=settings.gateway_port,
                print=lambda msg: log.info("%s", msg), handle_signals=True, access_log=None,
                reuse_port=worker or None, loop=loop_factory(settings.uvloop)())
