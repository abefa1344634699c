"""A gateway on a real port plus the projector, in a thread: for synchronous CLI tests.

The ``radtrain tasks`` verbs speak HTTP with urllib (blocking), so the gateway
cannot share the test's event loop: :func:`cli_stack` runs it (and the
projector and task-index consumers that turn events into the records it
serves) on a loop of its own. :func:`seed_tasks` publishes the events of a
completed task (its spec.json and weights in the store), a running one and a
failed one, as a runner would have.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

from aiohttp import web

from gateway.app import create_app
from handlers.enrich import enrich
from handlers.projector import RecordCache
from handlers.projector import handle_event as project
from handlers.task_index import handle_event as index_event
from handlers.weights_index import StoreWeightsIndex
from infra.bus.publish import publish_event
from infra.bus.subscriber import Subscriber, event_decoder, run_subscriber
from infra.bus.topology import PROJECTOR, TASK_INDEX, apply, connect
from infra.kv import DatasetRepo, TaskRepo
from infra.kv.listing import TASKS as TASK_LISTS
from infra.kv.listing import ListingIndex
from infra.settings import Settings
from infra.store import LocalStore
from schemas.events import (
    Artifact,
    TaskCompleted,
    TaskCompletedEvent,
    TaskFailed,
    TaskFailedEvent,
    TaskProgress,
    TaskProgressEvent,
    TaskReadyEvent,
    TaskRequestedEvent,
    TaskStarted,
    TaskStartedEvent,
)
from tests.support.factories import dataset, request


@dataclass(frozen=True)
class Seeded:
    completed: str
    running: str
    failed: str
    dataset_id: str


async def _serve(settings: Settings, stop: asyncio.Event, box: dict[str, object]) -> None:
    nc, js = await connect(settings, name="test-cli-stack")
    runner = web.AppRunner(create_app(settings))
    try:
        await apply(js, settings)
        tasks = await TaskRepo.open(js)
        index = await ListingIndex.open(js, TASK_LISTS)
        subs = [Subscriber(PROJECTOR, event_decoder(), partial(project, tasks=tasks,
                                                               cache=RecordCache())),
                Subscriber(TASK_INDEX, event_decoder(), partial(index_event, tasks=tasks,
                                                                index=index))]
        loops = [asyncio.create_task(run_subscriber(js, s, stop, fetch_timeout=0.5))
                 for s in subs]
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        box["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}"
        await asyncio.gather(*loops)
    finally:
        await runner.cleanup()
        await nc.close()


@contextmanager
def cli_stack(settings: Settings) -> Iterator[str]:
    """The gateway's base URL while the stack runs."""
    box: dict[str, object] = {}
    started = threading.Event()

    def main() -> None:
        async def go() -> None:
            stop = asyncio.Event()
            box["stop"], box["loop"] = stop, asyncio.get_running_loop()
            started.set()
            await _serve(settings, stop, box)

        try:
            asyncio.run(go())
        except BaseException as exc:  # surfaced by the caller
            box["error"] = exc
            started.set()

    thread = threading.Thread(target=main, name="cli-stack", daemon=True)
    thread.start()
    for _ in range(600):
        if "url" in box or "error" in box:
            break
        threading.Event().wait(0.05)
    if "error" in box or "url" not in box:
        raise RuntimeError("the CLI test stack did not start") from box.get(  # type: ignore[misc]
            "error")
    try:
        yield str(box["url"])
    finally:
        loop, stop = box["loop"], box["stop"]
        loop.call_soon_threadsafe(stop.set)  # type: ignore[attr-defined]
        thread.join(20.0)


def seed_tasks(settings: Settings, tenant: str) -> Seeded:
    return asyncio.run(_seed(settings, tenant))


async def _seed(settings: Settings, tenant: str) -> Seeded:
    done, running, failed = (f"cli-{uuid.uuid4().hex[:12]}" for _ in range(3))
    ds_id = f"ds-{uuid.uuid4().hex[:8]}"
    summary = dataset(id=ds_id, tenant=tenant)
    store = LocalStore(settings.store_dir)
    nc, js = await connect(settings, "test-cli-seed")
    try:
        await apply(js, settings)
        await (await DatasetRepo.open(js)).put(summary)
        for task_id in (done, running, failed):
            cmd = request(task_id=task_id, tenant=tenant, dataset_id=ds_id,
                          name=f"cli {task_id}")
            await publish_event(js, TaskRequestedEvent(source="t", subject=task_id, data=cmd))
            spec = enrich(cmd, summary, StoreWeightsIndex(store))
            await publish_event(js, TaskReadyEvent(source="t", subject=task_id, data=spec))
            await publish_event(js, TaskStartedEvent(source="t", subject=task_id, data=(
                TaskStarted(task_id=task_id, runner_id="r1", attempt=1))))
            if task_id == done:
                await publish_event(js, TaskCompletedEvent(source="t", subject=task_id, data=(
                    TaskCompleted(task_id=task_id, metrics={"auc": 0.91}, duration_s=3.0,
                                  artifacts=_artifacts(store, task_id, {
                                      "spec.json": spec.model_dump_json().encode(),
                                      "model.safetensors": b"weights"})))))
            elif task_id == running:
                await publish_event(js, TaskProgressEvent(source="t", subject=task_id, data=(
                    TaskProgress(task_id=task_id, epoch=1, epochs=5, step=3, total_steps=15,
                                 loss=0.7))))
            else:
                await publish_event(js, TaskFailedEvent(source="t", subject=task_id, data=(
                    TaskFailed(task_id=task_id, code="runner_failures", retryable=False,
                               message="the runner died 3 times"))))
    finally:
        await nc.close()
    return Seeded(completed=done, running=running, failed=failed, dataset_id=ds_id)


def _artifacts(store: LocalStore, task_id: str, files: dict[str, bytes]) -> list[Artifact]:
    out = []
    for name, body in files.items():
        key = f"runs/{task_id}/attempts/1/{name}"
        store.put_bytes(key, body)
        out.append(Artifact(name=name, key=key, uri=f"store://{key}",
                            sha256=hashlib.sha256(body).hexdigest(), size=len(body)))
    return out
