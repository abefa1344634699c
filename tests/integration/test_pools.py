"""Runner pools against a real nats-server: placement at enrich, dispatch per pool, live
runners in KV ``runners`` (GET /v1/runners), the ``--once`` runner, health probes.

The module runs its own authenticated server: its catalog (``cpu`` and ``gpu``), its
heartbeat TTL and the NATS outage of the readiness test stay out of the session's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nats.js import JetStreamContext

from handlers.app import run as run_handlers
from infra.bus import dead_letters as dlq
from infra.bus.publish import publish_event
from infra.bus.topology import DISPATCH_STREAM, TASKS_STREAM, apply, connect, runner_consumer
from infra.kv import DatasetRepo, RunRepo, TaskRepo
from infra.kv.runners import RunnerRepo, runner_key
from infra.settings import Settings
from infra.telemetry.health import Readiness, serve_health
from radtrain.oncall.dead_letter_ops import Redriver, list_dead_letters
from schemas.events import TaskRequestedEvent, parse_event
from schemas.pools import RunnerHeartbeat, RunnerPool
from tests.faults.helpers import wait_for
from tests.support.factories import dataset, request
from tests.support.nats_users import NatsUsers, start_authenticated_nats
from tests.support.tenancy_utils import gateway_client, issue_key

pytestmark = pytest.mark.integration

POOLS = [RunnerPool(name="cpu"), RunnerPool(name="gpu", gpus=1, gpu_memory_gb=24)]
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def users(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsUsers]:
    found = start_authenticated_nats(tmp_path_factory.mktemp("pools-nats"))
    yield found
    found.stop()


@pytest.fixture(scope="module")
def settings(users: NatsUsers, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    data = tmp_path_factory.mktemp("pools")
    return Settings(nats_url=users.services_url, store_dir=data / "store",
                    cache_dir=data / "cache", work_dir=data / "work", runner_pools=POOLS,
                    runner_heartbeat_s=0.5, retry_delay_scale=0.05, device="cpu",
                    runner_max_deliver=2, log_format="text")


@pytest.fixture(scope="module")
async def stack(settings: Settings) -> AsyncIterator[JetStreamContext]:
    """Topology applied, a dataset whose manifest is missing (a CPU task fails at once on
    the runner), and the handlers running."""
    nc, js = await connect(settings, "test-pools")
    await apply(js, settings)
    await (await DatasetRepo.open(js)).put(dataset())
    stop = asyncio.Event()
    handlers = asyncio.create_task(run_handlers(settings, stop))
    yield js
    stop.set()
    await asyncio.wait_for(handlers, 15)
    await nc.close()


async def submit(js: JetStreamContext, **resources: Any) -> str:
    task_id = uuid.uuid4().hex
    cmd = request(task_id=task_id, resources=resources)
    await publish_event(js, TaskRequestedEvent(source="test", subject=task_id, data=cmd))
    return task_id


async def last(js: JetStreamContext, subject: str, timeout_s: float = 20.0) -> Any:
    async def read() -> Any:
        info = await js.stream_info(TASKS_STREAM, subjects_filter=subject)
        if not info.state.subjects:
            return None
        return parse_event((await js.get_last_msg(TASKS_STREAM, subject)).data or b"")
    return await wait_for(read, timeout_s, subject)


async def dispatched(js: JetStreamContext, task_id: str) -> dict[str, int]:
    info = await js.stream_info(DISPATCH_STREAM, subjects_filter=f"dispatch.*.{task_id}")
    return dict(info.state.subjects or {})


async def test_a_gpu_task_goes_to_the_gpu_pool_and_a_cpu_runner_never_sees_it(
        settings: Settings, stack: JetStreamContext) -> None:
    from runner.app import run as run_runner  # torch: imported by this test only

    js = stack
    stop = asyncio.Event()
    runner = asyncio.create_task(run_runner(settings.model_copy(update={
        "runner_pool": "cpu", "runner_id": "cpu-1"}), stop))
    try:
        gpu_task = await submit(js, gpus=1)
        ready = await last(js, f"tasks.ready.{gpu_task}")
        assert ready.data.pool == "gpu" and ready.data.resources.gpus == 1
        # A second task.ready of the same generation (another msg id) is dispatched once.
        raw = await js.get_last_msg(TASKS_STREAM, f"tasks.ready.{gpu_task}")
        await js.publish(f"tasks.ready.{gpu_task}", raw.data or b"",
                         headers={"Nats-Msg-Id": f"{gpu_task}:ready:again"})
        cpu_task = await submit(js)  # default resources: the first pool, cpu
        failed = await last(js, f"tasks.failed.{cpu_task}", 60)
        assert failed.data.code == "dataset_missing"  # the cpu runner pulled and ran it
        assert await dispatched(js, gpu_task) == {f"dispatch.gpu.{gpu_task}": 1}
        gpu_queue = await js.consumer_info(DISPATCH_STREAM, runner_consumer("gpu"))
        assert gpu_queue.num_pending == 1 and gpu_queue.delivered.stream_seq == 0
        assert await (await RunRepo.open(js)).get(gpu_task) is None  # no runner claimed it
        started = await js.stream_info(TASKS_STREAM, subjects_filter=f"tasks.started.{gpu_task}")
        assert not started.state.subjects
    finally:
        stop.set()
        await asyncio.wait_for(runner, 30)


async def test_a_request_no_pool_satisfies_is_rejected_at_enrich_with_the_reason(
        stack: JetStreamContext) -> None:
    js = stack
    task_id = await submit(js, gpus=4)
    rejected = await last(js, f"tasks.rejected.{task_id}")
    [error] = rejected.data.errors
    assert (error.field, error.code) == ("resources.gpus", "no_pool")
    assert "gpus: 4" in error.message and "gpu (1 GPU(s) of 24 GB)" in error.message
    assert await dispatched(js, task_id) == {}


async def test_a_runner_letter_fails_the_task_and_its_redrive_is_dispatched_again(
        settings: Settings, stack: JetStreamContext) -> None:
    """A gpu runner that dies twice on a task (max_deliver 2 here): the forwarder files
    the DISPATCH copy as ``dlq.runner-gpu.<id>``, fails the task and drops the copy; a
    redrive re-opens it as generation 2, and the dispatcher queues it again."""
    js = stack
    task_id = await submit(js, gpus=1)
    await last(js, f"tasks.ready.{task_id}")
    psub = await js.pull_subscribe_bind(durable=runner_consumer("gpu"), stream=DISPATCH_STREAM)
    naks = 0
    while naks < 2:
        for msg in await psub.fetch(1, timeout=10):
            if msg.subject == f"dispatch.gpu.{task_id}":
                await msg.nak()
                naks += 1
            else:
                await msg.ack()  # an earlier test's gpu task: out of the way
    with contextlib.suppress(TimeoutError):  # a pull request: the server sees max_deliver
        assert await psub.fetch(1, timeout=2) == []
    await psub.unsubscribe()
    failed = await last(js, f"tasks.failed.{task_id}")
    assert failed.data.code == "dead_letter" and "runner-gpu gave up" in failed.data.message

    async def letter() -> list[dlq.StoredDeadLetter]:
        return await list_dead_letters(js, runner_consumer("gpu"), task_id)

    [dead] = await wait_for(letter, 20, "the runner-gpu dead letter")
    assert dead.get(dlq.H_STREAM) == DISPATCH_STREAM and dead.data  # the body was kept
    assert await dispatched(js, task_id) == {}  # the copy left the work queue

    async def record_failed() -> bool:
        found = await (await TaskRepo.open(js)).get(task_id)
        return found is not None and found[0].state == "failed"

    await wait_for(record_failed, 20, "the record to say failed")
    done = await (await Redriver.open(js, by="test")).redrive(dead)
    assert (done.action, done.generation) == ("reopened", 2), done
    again = await wait_for(lambda: dispatched(js, task_id), 20, "the redriven dispatch")
    assert again == {f"dispatch.gpu.{task_id}": 1}
    raw = await js.get_last_msg(DISPATCH_STREAM, f"dispatch.gpu.{task_id}")
    assert (raw.headers or {})["Nats-Msg-Id"] == f"{task_id}:dispatch:g2"
    assert parse_event(raw.data or b"").taskgeneration == 2


def heartbeat(runner_id: str, task: str | None = None, tenant: str | None = None
              ) -> RunnerHeartbeat:
    now = datetime.now(UTC)
    return RunnerHeartbeat(runner_id=runner_id, pool="gpu", current_task=task,
                           current_tenant=tenant, started_at=now, last_seen=now)


async def test_runners_lists_live_runners_and_drops_them_after_the_ttl(
        settings: Settings, stack: JetStreamContext) -> None:
    from runner.app import run as run_runner

    js = stack
    stop = asyncio.Event()
    runner = asyncio.create_task(run_runner(settings.model_copy(update={
        "runner_pool": "cpu", "runner_id": "live.cpu-1"}), stop))
    repo = await RunnerRepo.open(js)
    # Two runners that died without a word: one trains a default task, one another's.
    await repo.beat(heartbeat("dead-1", task="t-mine", tenant="default"))
    await repo.beat(heartbeat("dead-2", task="t-theirs", tenant="other"))
    try:
        async with gateway_client(settings, await issue_key(settings, "default")) as client:
            async def listed() -> dict[str, Any] | None:
                resp = await client.get("/v1/runners")
                assert resp.status == 200, await resp.text()
                body = await resp.json()
                ids = {r["runner_id"] for r in body["items"]}
                return body if {"live.cpu-1", "dead-1", "dead-2"} <= ids else None

            body = await wait_for(listed, 20, "the live and the dead runners listed")
            by_id = {r["runner_id"]: r for r in body["items"]}
            assert by_id["live.cpu-1"]["pool"] == "cpu" and not by_id["live.cpu-1"]["busy"]
            assert by_id["live.cpu-1"]["devices"][0]["kind"] == "cpu"
            assert by_id["dead-1"]["current_task"] == "t-mine" and by_id["dead-1"]["busy"]
            assert by_id["dead-2"]["current_task"] is None and by_id["dead-2"]["busy"]
            assert "t-theirs" not in json.dumps(body)
            assert [p["name"] for p in body["pools"]] == ["cpu", "gpu"]

            async def expired() -> list[str] | None:
                ids = [r["runner_id"] for r in (await (await client.get("/v1/runners")).json())[
                    "items"]]
                return ids if "dead-1" not in ids and "dead-2" not in ids else None

            # TTL: 3 heartbeats of 0.5 s; the live runner keeps rewriting its record.
            ids = await wait_for(expired, 15, "the dead runners to expire")
            assert "live.cpu-1" in ids
    finally:
        stop.set()
        await asyncio.wait_for(runner, 30)
    assert runner_key("live.cpu-1") not in await repo.kv.keys()  # it left on stopping


async def get(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.json()


def runner_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RADTRAIN_")}
    env.update(RADTRAIN_NATS_URL=settings.nats_url, RADTRAIN_STORE_DIR=str(settings.store_dir),
               RADTRAIN_CACHE_DIR=str(settings.cache_dir),
               RADTRAIN_WORK_DIR=str(settings.work_dir), RADTRAIN_DEVICE="cpu",
               RADTRAIN_RUNNER_POOLS=json.dumps([p.model_dump() for p in POOLS]),
               RADTRAIN_LOG_FORMAT="text", **extra)
    return env


async def test_the_once_runner_answers_its_probes_and_exits_0_after_one_task(
        settings: Settings, stack: JetStreamContext, tmp_path: Path) -> None:
    js = stack
    port = free_port()
    log = (tmp_path / "runner.log").open("w")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "runner", "--once", "--pool", "cpu", cwd=ROOT,
        env=runner_env(settings, RADTRAIN_RUNNER_HEALTH_PORT=str(port),
                       RADTRAIN_RUNNER_ID="once-1"), stdout=log, stderr=subprocess.STDOUT)
    try:
        async def ready() -> dict[str, Any] | None:
            if proc.returncode is not None:
                raise AssertionError((tmp_path / "runner.log").read_text())
            try:
                status, body = await get(f"http://127.0.0.1:{port}/readyz")
            except aiohttp.ClientError:
                return None
            return body if status == 200 else None

        body = await wait_for(ready, 60, "the once runner to be ready")
        assert body["consumers"] == ["runner-cpu"]
        assert (await get(f"http://127.0.0.1:{port}/healthz"))[0] == 200
        first, second = await submit(js), await submit(js)
        assert (await last(js, f"tasks.failed.{first}", 60)).data.code == "dataset_missing"
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        # The second task waits for the next runner: only one was taken.
        queue = await js.consumer_info(DISPATCH_STREAM, runner_consumer("cpu"))
        assert queue.num_pending + queue.num_ack_pending >= 1, queue
        assert await (await RunRepo.open(js)).get(second) is None
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()
    text = (tmp_path / "runner.log").read_text()
    assert "waiting for tasks (once)" in text, text


async def test_handlers_probes_say_unready_when_nats_is_down(tmp_path: Path) -> None:
    users = start_authenticated_nats(tmp_path / "nats")
    settings = Settings(nats_url=users.services_url, store_dir=tmp_path / "store",
                        log_format="text")
    port = free_port()
    readiness = Readiness()
    probes = await serve_health("127.0.0.1", port, readiness)
    assert probes is not None
    stop = asyncio.Event()
    handlers: asyncio.Task[None] | None = None
    try:
        assert (await get(f"http://127.0.0.1:{port}/healthz"))[0] == 200
        assert (await get(f"http://127.0.0.1:{port}/readyz"))[0] == 503  # not connected yet
        nc, js = await connect(settings, "test-apply")
        await apply(js, settings)
        await nc.close()
        handlers = asyncio.create_task(run_handlers(settings, stop, readiness))

        async def ready() -> dict[str, Any] | None:
            status, body = await get(f"http://127.0.0.1:{port}/readyz")
            return body if status == 200 else None

        body = await wait_for(ready, 30, "the handlers to be ready")
        assert {"enrich", "dispatch", "projector", "dlq-forwarder"} <= set(body["consumers"])
        users.stop()

        async def unready() -> dict[str, Any] | None:
            status, body = await get(f"http://127.0.0.1:{port}/readyz")
            return body if status == 503 else None

        down = await wait_for(unready, 30, "readyz to answer 503 with NATS down")
        assert any("NATS" in p for p in down["problems"]), down
        assert (await get(f"http://127.0.0.1:{port}/healthz"))[0] == 200  # the loop lives
    finally:
        stop.set()
        if handlers is not None:
            handlers.cancel()
            await asyncio.gather(handlers, return_exceptions=True)
        await probes.cleanup()
        users.stop()
