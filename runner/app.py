"""Wiring of the runner process: settings → NATS, store, device → consume ``runner``."""

from __future__ import annotations

import asyncio
import logging
import signal

from nats.aio.msg import Msg

from infra.bus.consumer import consume
from infra.bus.topology import RUNNER, connect, wait_for_streams
from infra.kv import TaskRepo
from infra.settings import Settings
from infra.store import open_store
from infra.telemetry.metrics import setup_process
from runner.job import pick_device
from runner.worker import RunnerContext, handle_ready

log = logging.getLogger("radtrain.runner")


async def run(settings: Settings, stop: asyncio.Event) -> None:
    device = pick_device(settings.device)
    nc, js = await connect(settings, name=f"radtrain-{settings.runner_id}")
    try:
        await wait_for_streams(js)
        ctx = RunnerContext(settings=settings, js=js, tasks=await TaskRepo.open(js),
                            store=open_store(settings), device=device)

        async def on_stop() -> None:
            await stop.wait()
            ctx.shutdown.set()  # the training thread checks it every step

        watcher = asyncio.create_task(on_stop())

        async def handle(msg: Msg) -> None:
            await handle_ready(msg, ctx)

        log.info("runner %s on %s waiting for tasks", settings.runner_id, device)
        await consume(js, RUNNER, handle, stop, batch=1)  # one task at a time per device
        watcher.cancel()
    finally:
        await nc.drain()


def main() -> None:
    settings = Settings()
    setup_process("runner", settings, settings.runner_metrics_port)
    asyncio.run(_main(settings))


async def _main(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run(settings, stop)
