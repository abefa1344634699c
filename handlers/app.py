"""Wiring of the handlers process: one explicit table from consumer to subscriber.

Each handler is a typed function ``(input, delivery, *, its own dependencies) ->
events to publish``; the table below decodes each consumer's bytes into that
input and binds the dependencies (DESIGN.md §2). The subscriber loop
(infra/bus/subscriber.py) publishes what a handler returns and settles the
message from the typed errors it raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from functools import partial
from typing import Any

from nats.js import JetStreamContext

from handlers.datasets_import.job import handle_import_job
from handlers.dead_letter_forwarder import on_advisory
from handlers.deliverer import WebhookContext, on_delivery_job, on_status_event, open_webhooks
from handlers.delivery_pool import run_fair_deliveries
from handlers.dispatch import handle_ready as dispatch_ready
from handlers.enrich import WeightsIndex
from handlers.enrich.handler import handle_requested
from handlers.inbound import decode_inbound, handle_inbound
from handlers.projector import RecordCache, handle_event
from handlers.search.handler import (
    SearchRepo,
    handle_search_event,
    not_for_search,
    search_lane,
)
from handlers.task_index import handle_event as index_event
from handlers.weights_index import StoreWeightsIndex
from infra import event_loop
from infra.admission import AdmissionRepo
from infra.bus.dead_letters import parse_advisory
from infra.bus.subscriber import (
    DecodeCache,
    SharedReads,
    Subscriber,
    event_decoder,
    model_decoder,
    one_lane,
    run_subscriber,
)
from infra.bus.topology import (
    ADMISSION,
    DATASET_IMPORT,
    DISPATCHER,
    DLQ_FORWARDER,
    ENRICH,
    PROJECTOR,
    SEARCH,
    TASK_INDEX,
    WEBHOOK_DELIVERIES,
    WEBHOOKS,
    connect,
    stream_of,
    wait_for_streams,
)
from infra.dataset_imports import ImportRepo
from infra.kv import DatasetRepo, TaskRepo
from infra.kv.listing import TASKS as TASK_LISTS
from infra.kv.listing import ListingIndex
from infra.kv.ready import open_when_ready
from infra.settings import Settings
from infra.store import ObjectStore, open_store
from infra.telemetry.health import Readiness, serve_health
from infra.telemetry.metrics import setup_process
from schemas.dataset_import import ImportJob
from schemas.events import TaskReadyEvent, TaskRequestedEvent
from schemas.webhooks import WebhookJob

log = logging.getLogger("radtrain.handlers")


def subscribers(*, js: JetStreamContext, datasets: DatasetRepo, tasks: TaskRepo,
                store: ObjectStore, weights: WeightsIndex, hooks: WebhookContext,
                imports: ImportRepo, admissions: AdmissionRepo, settings: Settings,
                index: ListingIndex | None = None,
                searches: SearchRepo | None = None) -> dict[str, Subscriber[Any]]:
    """The table: durable consumer → how its messages decode, and the bound handler
    (``index`` omitted: no task-index consumer, for benches of single consumers).
    The consumers of task events share one decode cache: each event is decoded once."""
    decoded = DecodeCache(settings.decode_cache_bytes)
    records = RecordCache()  # the projector's last writes; the task index reads them too
    table: list[Subscriber[Any]] = [
        Subscriber(ENRICH, event_decoder(TaskRequestedEvent, cache=decoded), partial(
            handle_requested, datasets=datasets, tasks=tasks, store=store, weights=weights,
            pools=settings.runner_pools, dataset_reads=SharedReads(datasets.get))),
        # task.ready -> dispatch.<pool>.<id>: the queue of the pool enrich placed it on.
        Subscriber(DISPATCHER, event_decoder(TaskReadyEvent, cache=decoded), partial(
            dispatch_ready, js=js, pools=settings.runner_pools)),
        # Upstream systems over NATS: admission, then tasks.requested.<id> (for enrich).
        Subscriber(ADMISSION, decode_inbound, partial(handle_inbound, admissions=admissions,
                                                      js=js)),
        Subscriber(PROJECTOR, event_decoder(cache=decoded), partial(handle_event, tasks=tasks,
                                                                    cache=records)),
        # One event at a time: each lists its tenant's subscriptions with a KV watch.
        Subscriber(WEBHOOKS, event_decoder(cache=decoded), partial(
            on_status_event, js=js, tasks=tasks, ctx=hooks), lane=one_lane),
        # Receivers may take up to the HTTP timeout each: attempt a batch side by side.
        Subscriber(WEBHOOK_DELIVERIES, model_decoder(WebhookJob),
                   partial(on_delivery_job, ctx=hooks), batch=32, concurrent=True),
        # Not on TASKS: a durable consumer on the ADVISORIES stream (max deliveries and
        # dead-letter terms), so no dead letter is missed while this process is down.
        Subscriber(DLQ_FORWARDER, parse_advisory, partial(on_advisory, js=js)),
        # One import at a time, its pipeline in a worker thread: a 200,000-file
        # import never holds up the loops above (each subscriber has its own loop).
        Subscriber(DATASET_IMPORT, model_decoder(ImportJob), partial(
            handle_import_job, store=store, datasets=datasets, imports=imports,
            settings=settings), batch=1),
    ]
    if index is not None:  # per-tenant task lists (GET /v1/tasks), after the projector's records
        # Each task's events in order, the tasks of a batch side by side: positions are
        # reserved in the process and counter changes queue behind one write
        # (infra/kv/listing.py), so a burst costs few counter writes.
        table.append(Subscriber(TASK_INDEX, event_decoder(cache=decoded), partial(
            index_event, tasks=tasks, index=index, records=records)))
    if searches is not None:  # issue 18: hyperparameter search parents and their trials
        table.append(Subscriber(SEARCH, event_decoder(cache=decoded), partial(
            handle_search_event, js=js, searches=searches, store=store, admissions=admissions),
            lane=search_lane, skip=not_for_search))  # most events: acked undecoded
    return {sub.durable: sub for sub in table}


SETTLE_LISTS_S = 5.0
"""At shutdown, how long the lists' owed positions (infra/kv/listing_repair.py) are
given to be given up before the process exits without them."""

async def run(settings: Settings, stop: asyncio.Event,
              readiness: Readiness | None = None, *, freeze: bool = False) -> None:
    ready = readiness or Readiness()
    nc, js = await connect(settings, name="radtrain-handlers")
    ready.nc, ready.js = nc, js
    try:
        await wait_for_streams(js)
        hooks = await open_webhooks(settings, js)
        store = open_store(settings)
        index = await open_when_ready(partial(ListingIndex.open, kind=TASK_LISTS), js)
        datasets = await open_when_ready(DatasetRepo.open, js)
        lists = [index, *([datasets.lists] if datasets.lists else [])]
        table = subscribers(js=js, datasets=datasets,
                            tasks=await open_when_ready(TaskRepo.open, js), store=store,
                            weights=StoreWeightsIndex(store), hooks=hooks,
                            imports=await open_when_ready(ImportRepo.open, js),
                            admissions=await open_when_ready(AdmissionRepo.open, js),
                            settings=settings, index=index,
                            searches=await open_when_ready(SearchRepo.open, js))
        log.info("handlers consuming %s", ", ".join(table))
        ready.consumers = [(stream_of(name), name) for name in table]
        if freeze:  # the service, not a test running it in its own process
            event_loop.freeze_startup_heap()
        loops = [asyncio.create_task(
            # issue 17: webhook jobs start fairly across tenants and endpoints
            run_fair_deliveries(js, sub, stop, settings) if name == WEBHOOK_DELIVERIES
            else run_subscriber(js, sub, stop)) for name, sub in table.items()]
        ready.bound = True
        try:
            await asyncio.gather(*loops)
            with contextlib.suppress(TimeoutError):  # what it owes the lists, while it can
                await asyncio.wait_for(asyncio.gather(*(lst.repairs.settled() for lst in lists)),
                                       SETTLE_LISTS_S)
        finally:
            for lst in lists:
                lst.repairs.close()
            await hooks.close()
    finally:
        await nc.drain()


def main() -> None:
    settings = Settings()
    setup_process("handlers", settings, settings.handlers_metrics_port)
    event_loop.run(_main(settings), use_uvloop=settings.uvloop)


async def _main(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    readiness = Readiness()
    probes = await serve_health(settings.metrics_host, settings.handlers_health_port, readiness)
    try:
        await run(settings, stop, readiness, freeze=True)
    finally:
        if probes is not None:
            await probes.cleanup()
