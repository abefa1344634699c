"""Wiring of the gateway: settings → NATS → aiohttp application."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from gateway.errors import error_middleware
from gateway.keys import CONNECTED, JS, SETTINGS, TASKS
from gateway.tasks import routes
from infra.jetstream import connect
from infra.kv import TaskRepo
from infra.settings import Settings

log = logging.getLogger("radtrain.gateway")


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[error_middleware],
                          client_max_size=settings.max_request_bytes)
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_nats_ctx)
    app.add_routes(routes)
    return app


async def _nats_ctx(app: web.Application) -> AsyncIterator[None]:
    nc, js = await connect(app[SETTINGS], name="radtrain-gateway")
    app[CONNECTED] = nc
    app[JS] = js
    app[TASKS] = await _open_tasks(js)
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


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = Settings()
    web.run_app(create_app(settings), host=settings.gateway_host, port=settings.gateway_port,
                print=lambda msg: log.info("%s", msg), handle_signals=True)
