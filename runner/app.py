"""Wiring of the runner process: settings → NATS, store, device → consume ``runner``."""

from __future__ import annotations

import asyncio
import logging
import signal
from functools import partial

from infra.bus.subscriber import Subscriber, event_decoder, run_subscriber
from infra.bus.topology import RUNNER, connect, wait_for_streams
from infra.kv import RunRepo, TaskRepo
from infra.settings import Settings
from infra.store import open_store
from infra.telemetry.metrics import setup_process
from runner.attempt import default_runner_id
from runner.job import pick_device
from runner.worker import RunnerContext, handle_ready
from schemas.events import TaskReadyEvent

log = logging.getLogger("radtrain.runner")


def subscriber(ctx: RunnerContext) -> Subscriber[TaskReadyEvent]:
    """The runner's one consumer: ``task.ready`` → trained; one task at a time per device."""
    return Subscriber(RUNNER, event_decoder(TaskReadyEvent), partial(handle_ready, ctx=ctx),
                      batch=1)


def with_runner_id(settings: Settings) -> Settings:
    """Settings naming this runner process: ``runner_id`` or ``<hostname>-<pid>``."""
    if settings.runner_id:
        return settings
    return settings.model_copy(update={"runner_id": default_runner_id()})


async def run(settings: Settings, stop: asyncio.Event) -> None:
    settings = with_runner_id(settings)
    device = pick_device(settings.device)
    nc, js = await connect(settings, name=f"radtrain-{settings.runner_id}")
    try:
        await wait_for_streams(js)
        ctx = RunnerContext(settings=settings, js=js, tasks=await TaskRepo.open(js),
                            runs=await RunRepo.open(js), store=open_store(settings),
                            device=device)

        async def on_stop() -> None:
            await stop.wait()
            ctx.shutdown.set()  # the training thread checks it every step

        watcher = asyncio.create_task(on_stop())
        log.info("runner %s on %s waiting for tasks", settings.runner_id, device)
        await run_subscriber(js, subscriber(ctx), stop)
        watcher.cancel()
    finally:
        await nc.drain()


def main() -> None:
    settings = with_runner_id(Settings())
    setup_process("runner", settings, settings.runner_metrics_port)
    asyncio.run(_main(settings))


async def _main(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await run(settings, stop)
