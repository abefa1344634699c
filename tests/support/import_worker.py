"""The handlers process's dataset-import consumer, run by a test (same subscriber loop).

``import_worker`` runs it as a task of the test's event loop; ``import_worker_thread``
in a thread with its own loop, for synchronous tests (the CLI through CliRunner).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from handlers.datasets_import.job import import_subscriber
from infra.bus.subscriber import run_subscriber
from infra.bus.topology import connect
from infra.dataset_imports import ImportRepo
from infra.kv import DatasetRepo
from infra.settings import Settings
from infra.store import open_store


async def _serve(settings: Settings, stop: asyncio.Event, ready: threading.Event) -> None:
    nc, js = await connect(settings, name="test-import-worker")
    try:
        sub = import_subscriber(store=open_store(settings), datasets=await DatasetRepo.open(js),
                                imports=await ImportRepo.open(js), settings=settings)
        ready.set()
        await run_subscriber(js, sub, stop, fetch_timeout=0.5)
    finally:
        await nc.close()


@asynccontextmanager
async def import_worker(settings: Settings) -> AsyncIterator[None]:
    stop, ready = asyncio.Event(), threading.Event()
    task = asyncio.create_task(_serve(settings, stop, ready))
    try:
        while not ready.is_set():
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10.0)


@contextmanager
def import_worker_thread(settings: Settings) -> Iterator[None]:
    ready = threading.Event()
    box: dict[str, object] = {}

    def main() -> None:
        async def go() -> None:
            stop = asyncio.Event()
            box["stop"], box["loop"] = stop, asyncio.get_running_loop()
            await _serve(settings, stop, ready)

        try:
            asyncio.run(go())
        except BaseException as exc:  # surfaced by the caller
            box["error"] = exc
            ready.set()

    thread = threading.Thread(target=main, name="import-worker", daemon=True)
    thread.start()
    assert ready.wait(30.0), "the import worker did not start"
    if "error" in box:
        raise RuntimeError("the import worker failed") from box["error"]  # type: ignore[misc]
    try:
        yield
    finally:
        loop, stop = box["loop"], box["stop"]
        loop.call_soon_threadsafe(stop.set)  # type: ignore[attr-defined]
        thread.join(15.0)
