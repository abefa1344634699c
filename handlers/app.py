"""Wiring of the handlers process: one explicit table from consumer to handler."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.msg import Msg

from handlers.adapters import StoreWeightsIndex
from handlers.dead_letter_forwarder import on_advisory
from handlers.deliverer import on_delivery_job, on_status_event, open_webhooks
from handlers.transport import Deps, on_any_event, on_requested
from infra.bus.consumer import consume
from infra.bus.topology import (
    DLQ_FORWARDER,
    ENRICH,
    PROJECTOR,
    WEBHOOK_DELIVERIES,
    WEBHOOKS,
    connect,
    wait_for_streams,
)
from infra.kv import DatasetRepo, TaskRepo
from infra.settings import Settings
from infra.store import open_store
from infra.telemetry.metrics import setup_process

log = logging.getLogger("radtrain.handlers")

HANDLERS: dict[str, Callable[[Msg, Deps], Awaitable[None]]] = {
    ENRICH: on_requested,
    PROJECTOR: on_any_event,
    WEBHOOKS: on_status_event,
    WEBHOOK_DELIVERIES: on_delivery_job,
    # Not on TASKS: a durable consumer on the ADVISORIES stream (max deliveries and
    # dead-letter terms), so no dead letter is missed while this process is down.
    DLQ_FORWARDER: on_advisory,
}

CONSUME_OPTIONS: dict[str, dict[str, Any]] = {
    # Receivers may take up to the HTTP timeout each: attempt a batch side by side.
    WEBHOOK_DELIVERIES: {"batch": 32, "concurrent": True},
}


async def run(settings: Settings, stop: asyncio.Event) -> None:
    nc, js = await connect(settings, name="radtrain-handlers")
    try:
        await wait_for_streams(js)
        hooks = await open_webhooks(settings, js)
        store = open_store(settings)
        deps = Deps(js=js, datasets=await DatasetRepo.open(js), tasks=await TaskRepo.open(js),
                    weights=StoreWeightsIndex(store), webhooks=hooks, store=store)
        loops = [
            consume(js, durable, _bind(handler, deps), stop, **CONSUME_OPTIONS.get(durable, {}))
            for durable, handler in HANDLERS.items()
        ]
        log.info("handlers consuming %s", ", ".join(HANDLERS))
        try:
            await asyncio.gather(*loops)
        finally:
            await hooks.close()
    finally:
        await nc.drain()


def _bind(handler: Callable[[Msg, Deps], Awaitable[None]], deps: Deps
          ) -> Callable[[Msg], Awaitable[None]]:
    async def bound(msg: Msg) -> None:
        await handler(msg, deps)
    return bound


def main() -> None:
    settings = Settings()
    setup_process("handlers", settings, settings.handlers_metrics_port)
    asyncio.run(_main(settings))


async def _main(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run(settings, stop)
