"""Wiring of the handlers process: one explicit table from consumer to handler."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg

from handlers.adapters import StoreWeightsIndex
from handlers.transport import Deps, on_any_event, on_requested
from infra.consumer import consume
from infra.jetstream import ENRICH, PROJECTOR, connect, wait_for_streams
from infra.kv import DatasetRepo, TaskRepo
from infra.settings import Settings
from infra.store import open_store

log = logging.getLogger("radtrain.handlers")

HANDLERS: dict[str, Callable[[Msg, Deps], Awaitable[None]]] = {
    ENRICH: on_requested,
    PROJECTOR: on_any_event,
}


async def run(settings: Settings, stop: asyncio.Event) -> None:
    nc, js = await connect(settings, name="radtrain-handlers")
    try:
        await wait_for_streams(js)
        deps = Deps(js=js, datasets=await DatasetRepo.open(js), tasks=await TaskRepo.open(js),
                    weights=StoreWeightsIndex(open_store(settings)))
        loops = [
            consume(js, durable, _bind(handler, deps), stop)
            for durable, handler in HANDLERS.items()
        ]
        log.info("handlers consuming %s", ", ".join(HANDLERS))
        await asyncio.gather(*loops)
    finally:
        await nc.drain()


def _bind(handler: Callable[[Msg, Deps], Awaitable[None]], deps: Deps
          ) -> Callable[[Msg], Awaitable[None]]:
    async def bound(msg: Msg) -> None:
        await handler(msg, deps)
    return bound


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = Settings()
    asyncio.run(_main(settings))


async def _main(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run(settings, stop)
