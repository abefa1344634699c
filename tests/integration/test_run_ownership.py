"""The runner's ownership check against a real nats-server, reached through a proxy that
can take it away: NATS down during the check stops the checkpoint write (fail closed)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import pytest

from infra.bus.topology import apply, connect
from infra.kv import RunRepo
from infra.settings import Settings
from infra.store import LocalStore
from runner.attempt import UNVERIFIED, Attempt, RunnerContext
from runner.checkpoint import Checkpointer, checkpoint_key
from runner.ownership import Claimant, claim
from schemas.events import TaskReadyEvent
from tests.faults.proxy import PausableProxy
from tests.unit.runner.test_checkpoint_resume import tiny_spec

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def via(url: str, port: int) -> str:
    """``url`` (credentials kept) pointed at ``127.0.0.1:port``."""
    parts = urlsplit(url)
    auth = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit((parts.scheme, f"{auth}127.0.0.1:{port}", "", "", ""))


@pytest.fixture
def proxy(nats_server: str) -> Iterator[PausableProxy]:
    target = urlsplit(nats_server)
    p = PausableProxy(target.hostname or "127.0.0.1", target.port or 4222).start()
    yield p
    p.close()


async def test_nats_down_during_the_ownership_check_stops_the_write(
        nats_server: str, proxy: PausableProxy, tmp_path: Path) -> None:
    settings = Settings(nats_url=nats_server, store_dir=tmp_path / "store",
                        work_dir=tmp_path / "work", runner_id="r-1")
    nc, js = await connect(settings, "test-apply")
    await apply(js, settings)
    await nc.close()
    task_id = f"own-{tmp_path.name[-12:].replace('_', '-')}"
    spec = tiny_spec().model_copy(update={"task_id": task_id})
    nc, js = await connect(settings.model_copy(update={"nats_url": via(nats_server, proxy.port)}),
                           "test-owner")
    try:
        runs = await RunRepo.open(js)
        won = await claim(runs, Claimant(task_id=task_id, seq=1, generation=1,
                                         runner_id="r-1", max_failures=3))
        assert won.action == "claim" and won.attempt == 1
        store = LocalStore(settings.store_dir)
        ctx = RunnerContext(settings=settings, js=js, tasks=cast(Any, None), runs=runs,
                            store=store, device="cpu", shutdown=threading.Event())
        ready = TaskReadyEvent(source="test", subject=task_id, data=spec)
        sup = Attempt(cast(Any, None), ctx, ready, 1)
        ckpt = Checkpointer(store, spec, settings.work_dir, sup.owns, attempt=1)
        assert await asyncio.to_thread(ckpt.save, {"epoch": 1})  # the owner, NATS up: written
        store.delete(checkpoint_key(task_id, 1))

        proxy.down = True  # NATS unreachable from here on
        proxy._loop.call_soon_threadsafe(proxy._cut_all)
        assert await asyncio.to_thread(ckpt.save, {"epoch": 2}) is False
        assert not store.exists(checkpoint_key(task_id, 1))  # nothing written blindly
        assert sup.should_stop() == UNVERIFIED  # the attempt stops: a transient error, nak
    finally:
        proxy.down = False
        await nc.close()
