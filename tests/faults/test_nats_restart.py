"""Fault: nats-server killed (-9) and restarted during a burst of 500 submissions.

Gateway and handlers run as their own processes (no runner): every task the
gateway accepted (202) must end ``ready`` or ``rejected`` exactly once in the
stream, its ``task.requested`` must be there exactly once, and while NATS was
gone the gateway must have answered 503, never crashed or answered 500.
Clients retry a 503 with the same Idempotency-Key, as a real client would.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from infra.bus.topology import connect
from infra.kv import DatasetRepo, TaskRepo
from radtrain.servers.nats import start_nats
from radtrain.stack import Stack, start_stack
from tests.faults.helpers import GOOD_BODY, fault_settings, per_task, subject_counts, wait_for
from tests.support.factories import dataset

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

N = 500
KILL_AFTER = 150
OUTAGE_S = 3.0
CONCURRENCY = 25


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    st = start_stack(fault_settings(tmp_path_factory.mktemp("restart")),
                     services=("gateway", "handlers"))
    yield st
    st.stop()


class Burst:
    """500 clients' worth of submissions, each retried on 503 with its own key."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.accepted: dict[str, str] = {}  # idempotency key -> task id
        self.statuses: Counter[int | str] = Counter()
        self.kill_now = asyncio.Event()

    async def submit(self, session: aiohttp.ClientSession, i: int, deadline: float) -> None:
        key = f"burst-{i}"
        body: dict[str, Any] = {**GOOD_BODY, "name": f"burst {i}",
                                "dataset_id": "ds-good" if i % 2 == 0 else "ds-missing"}
        while time.monotonic() < deadline:
            try:
                async with session.post(f"{self.stack.gateway_url}/v1/tasks", json=body,
                                        headers={"Idempotency-Key": key}) as resp:
                    self.statuses[resp.status] += 1
                    if resp.status == 202:
                        self.accepted[key] = (await resp.json())["task_id"]
                        if len(self.accepted) >= KILL_AFTER:
                            self.kill_now.set()
                        return
                    assert resp.status == 503, (resp.status, await resp.text())
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.statuses[type(exc).__name__] += 1
            await asyncio.sleep(0.2)
        raise AssertionError(f"{key} never accepted")

    async def run(self) -> None:
        auth = {"Authorization": f"Bearer {self.stack.api_key}"}
        sem = asyncio.Semaphore(CONCURRENCY)
        deadline = time.monotonic() + 90
        async with aiohttp.ClientSession(headers=auth,
                                         timeout=aiohttp.ClientTimeout(total=15)) as session:
            async def one(i: int) -> None:
                async with sem:
                    await self.submit(session, i, deadline)

            await asyncio.gather(*(one(i) for i in range(N)), self.kill_and_restart())

    async def kill_and_restart(self) -> None:
        await self.kill_now.wait()
        nats = self.stack.nats
        assert nats is not None
        port = int(self.stack.settings.nats_url.rsplit(":", 1)[1])
        os.kill(nats.pid, signal.SIGKILL)
        await asyncio.to_thread(nats.stop)
        await asyncio.sleep(OUTAGE_S)
        data = self.stack.settings.data_dir.resolve() / "nats"
        self.stack.nats, _ = await asyncio.to_thread(
            start_nats, data, port, self.stack.settings.nats_sync_always)


async def test_nats_restart_during_burst_loses_and_doubles_nothing(stack: Stack) -> None:
    nc, js = await connect(stack.settings, "test-restart")
    await (await DatasetRepo.open(js)).put(dataset(id="ds-good"))
    await nc.close()

    burst = Burst(stack)
    await burst.run()
    assert len(burst.accepted) == N
    assert burst.statuses[503] > 0, burst.statuses  # NATS really was down for some
    assert not [s for s in burst.statuses if isinstance(s, int) and s not in (202, 503)]
    assert "ClientConnectorError" not in burst.statuses  # the gateway itself stayed up
    assert not stack.dead_services(), {n: stack.log_tail(n) for n in stack.dead_services()}

    tasks = set(burst.accepted.values())
    assert len(tasks) == N
    nc, js = await connect(stack.settings, "test-restart")
    try:
        async def outcomes() -> dict[str, int] | None:
            counts = await subject_counts(js)
            done = Counter(per_task(counts, "ready")) + Counter(per_task(counts, "rejected"))
            return counts if tasks <= set(done) else None

        counts = await wait_for(outcomes, 90, "every accepted task's outcome", interval_s=1.0)
        requested = per_task(counts, "requested")
        ready, rejected = per_task(counts, "ready"), per_task(counts, "rejected")
        assert {t: requested.get(t) for t in tasks} == dict.fromkeys(tasks, 1)
        assert not set(ready) & set(rejected)
        assert all(n == 1 for n in [*ready.values(), *rejected.values()])
        by_key = {int(k.split("-")[1]): t for k, t in burst.accepted.items()}
        assert {by_key[i] for i in range(0, N, 2)} == set(ready) & tasks
        assert {by_key[i] for i in range(1, N, 2)} == set(rejected) & tasks

        repo = await TaskRepo.open(js)

        async def projected() -> bool:
            states: Counter[str | None] = Counter()
            for t in tasks:
                found = await repo.get(t)
                states[found[0].state if found else None] += 1
            return states == {"ready": N // 2, "rejected": N // 2}

        await wait_for(projected, 60, "the projector to catch up", interval_s=1.0)
        print(f"{N} accepted; HTTP answers {dict(burst.statuses)}; {len(ready)} ready, "
              f"{len(rejected)} rejected, each once; requested once each")
    finally:
        await nc.close()
