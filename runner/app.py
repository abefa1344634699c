"""Wiring of the runner process: settings → NATS, store, device → consume ``runner-<pool>``.

A runner serves one pool (setting ``runner_pool``): it pulls ``task.ready`` copies
from ``dispatch.<pool>.*`` through the durable ``runner-<pool>`` that every runner
of the pool shares (handlers/dispatch.py routes them there). It announces itself
in KV ``runners`` (runner/presence.py), serves ``/healthz`` and ``/readyz`` on
``runner_health_port``, and can scale to zero: ``--once`` takes one task and
exits 0, ``--idle-exit S`` (``runner_idle_exit_s``) exits 0 after S seconds
without a task (a Kubernetes Job, a KEDA ScaledJob).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Sequence
from functools import partial

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from imaging.budget import DecodeBudget, set_default_budget
from infra import event_loop
from infra.bus.subscriber import Subscriber, event_decoder, run_subscriber
from infra.bus.topology import (
    DISPATCH_STREAM,
    connect,
    runner_consumer,
    stream_of,
    wait_for_streams,
)
from infra.kv import RunRepo, TaskRepo
from infra.kv.ready import open_when_ready
from infra.kv.runners import RunnerRepo
from infra.settings import Settings
from infra.store import open_store
from infra.telemetry.health import Readiness, serve_health
from infra.telemetry.metrics import setup_process
from runner.attempt import default_runner_id
from runner.job import pick_device
from runner.presence import Presence
from runner.worker import RunnerContext, handle_ready
from schemas.events import TaskReadyEvent

log = logging.getLogger("radtrain.runner")
CONSUMER_WAIT_S = 60.0


def subscriber(ctx: RunnerContext, presence: Presence | None = None
               ) -> Subscriber[TaskReadyEvent]:
    """The runner's one consumer: its pool's ``task.ready`` → trained; one task at a time."""
    handle = partial(handle_ready, ctx=ctx)
    return Subscriber(runner_consumer(ctx.settings.runner_pool), event_decoder(TaskReadyEvent),
                      presence.wrap(handle) if presence is not None else handle, batch=1)


def with_runner_id(settings: Settings) -> Settings:
    """Settings naming this runner process: ``runner_id`` or ``<hostname>-<pid>``."""
    if settings.runner_id:
        return settings
    return settings.model_copy(update={"runner_id": default_runner_id()})


async def wait_for_consumer(js: JetStreamContext, pool: str,
                            timeout_s: float = CONSUMER_WAIT_S) -> None:
    """The pool's consumer is created by ``infra apply`` from ``runner_pools``."""
    durable = runner_consumer(pool)
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            await js.consumer_info(DISPATCH_STREAM, durable)
            return
        except NotFoundError:
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"consumer {DISPATCH_STREAM}/{durable} missing: add pool "
                                   f"{pool!r} to runner_pools and run `radtrain infra apply`"
                                   ) from None
            await asyncio.sleep(0.5)


async def run(settings: Settings, stop: asyncio.Event,
              readiness: Readiness | None = None) -> None:
    """Serve until ``stop`` (a signal: a training task is preempted) or, in a
    scale-to-zero mode, until the runner is done (between tasks)."""
    settings = with_runner_id(settings)
    set_default_budget(DecodeBudget(settings.decode_budget_request_bytes,  # issue 17
                                    settings.decode_budget_process_bytes,
                                    settings.decode_budget_wait_s))
    device = pick_device(settings.device)
    ready = readiness or Readiness()
    nc, js = await connect(settings, name=f"radtrain-{settings.runner_id}")
    ready.nc, ready.js = nc, js
    try:
        await wait_for_streams(js)
        await wait_for_consumer(js, settings.runner_pool)
        ctx = RunnerContext(settings=settings, js=js,
                            tasks=await open_when_ready(TaskRepo.open, js),
                            runs=await open_when_ready(RunRepo.open, js),
                            store=open_store(settings), device=device)
        presence = Presence(await open_when_ready(RunnerRepo.open, js), settings, device)
        sub = subscriber(ctx, presence)
        ready.consumers = [(stream_of(sub.durable), sub.durable)]

        async def on_stop() -> None:
            await stop.wait()
            ctx.shutdown.set()  # the training thread checks it every step
            presence.done.set()

        watcher = asyncio.create_task(on_stop())
        beats = asyncio.create_task(presence.run())
        log.info("runner %s of pool %s on %s waiting for tasks (%s)", settings.runner_id,
                 settings.runner_pool, device, presence.record.mode)
        ready.bound = True
        try:
            await run_subscriber(js, sub, presence.done)
        finally:
            ready.bound = False
            presence.done.set()
            watcher.cancel()
            await beats
            await presence.leave()
    finally:
        await nc.drain()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m runner", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--once", action="store_true",
                        help="take one task, then exit 0 (a Kubernetes Job)")
    parser.add_argument("--idle-exit", type=float, metavar="SECONDS", default=None,
                        help="exit 0 after this long without a task")
    parser.add_argument("--pool", default=None, help="the pool to serve (runner_pool)")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace, base: Settings) -> Settings:
    update: dict[str, object] = {}
    if args.once:
        update["runner_once"] = True
    if args.idle_exit is not None:
        update["runner_idle_exit_s"] = args.idle_exit
    if args.pool:
        update["runner_pool"] = args.pool
    return base.model_copy(update=update) if update else base


def main(argv: Sequence[str] | None = None) -> None:
    settings = with_runner_id(settings_from(parse_args(argv), Settings()))
    setup_process("runner", settings, settings.runner_metrics_port)
    event_loop.run(_main(settings), use_uvloop=settings.uvloop)


async def _main(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    readiness = Readiness()
    probes = await serve_health(settings.metrics_host, settings.runner_health_port, readiness)
    try:
        await run(settings, stop, readiness)
    finally:
        if probes is not None:
            await probes.cleanup()
