"""``GET /v1/tasks`` from the per-tenant numbered lists (infra/kv/listing.py), through the
real gateway on a real, authenticated nats-server of this module's own (its consumers
start from an empty stream)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from handlers.projector import handle_event as project_event
from handlers.task_index import handle_event as index_event
from infra.bus.publish import publish_event
from infra.bus.subscriber import Subscriber, event_decoder, run_subscriber
from infra.bus.topology import PROJECTOR, TASK_INDEX, connect
from infra.kv import DatasetRepo, TaskRepo
from infra.kv.listing import TASKS, ListingIndex
from infra.settings import Settings
from schemas.common import ErrorDetail
from schemas.events import TaskRejected, TaskRejectedEvent
from schemas.record import STATE_RANK, TaskRecord
from tests.support.factories import dataset
from tests.support.nats_users import start_authenticated_nats
from tests.support.tenancy_utils import apply_streams, bearer, gateway_client, issue_key

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

T0 = datetime(2026, 1, 1, tzinfo=UTC)
GOOD: dict[str, Any] = {
    "name": "listed", "flow": "general", "task_type": "classification", "dataset_id": "ds1",
    "model": {"mode": "manual", "network": "mobilenetv3_small_100", "pretrained": False},
}


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    users = start_authenticated_nats(tmp_path_factory.mktemp("nats-listing"), port=0,
                                     sync_always=False)
    try:
        yield users.services_url
    finally:
        users.stop()


class World:
    def __init__(self, settings: Settings, client: TestClient, keys: dict[str, str],
                 tasks: TaskRepo, index: ListingIndex) -> None:
        self.settings, self.client, self.keys = settings, client, keys
        self.tasks, self.index = tasks, index
        self.made = 0
        self.run = uuid.uuid4().hex[:8]

    async def task(self, tenant: str, state: str = "requested", generation: int = 1) -> str:
        """A record as the projector writes it, listed as the task-index consumer does."""
        self.made += 1
        task_id = f"{tenant}-{self.run}-{self.made:05d}"
        at = T0 + timedelta(seconds=self.made)
        await self.tasks.kv.put(task_id, TaskRecord(
            task_id=task_id, tenant=tenant, name="t", state=state, flow="general",  # type: ignore[arg-type]
            dataset_id="ds1", created_at=at, updated_at=at, generation=generation))
        await self.index.converge(tenant, task_id, state, (generation, STATE_RANK[state]))
        return task_id

    async def move(self, task_id: str, state: str, generation: int = 1) -> None:
        found = await self.tasks.get(task_id)
        assert found is not None
        record = found[0].model_copy(update={"state": state, "generation": generation})
        await self.tasks.kv.put(task_id, record)
        await self.index.converge(record.tenant, task_id, state,
                                  (generation, STATE_RANK[state]))

    async def get(self, tenant: str, query: str, status: int = 200) -> dict[str, Any]:
        return await self.get_path(tenant, f"/v1/tasks?{query}", status)

    async def get_path(self, tenant: str, path: str, status: int = 200) -> dict[str, Any]:
        resp = await self.client.get(path, headers=bearer(self.keys[tenant]))
        body: dict[str, Any] = await resp.json()
        assert resp.status == status, body
        return body

    async def all_pages(self, tenant: str, query: str = "limit=7",
                        between: Any = None) -> list[str]:
        body = await self.get(tenant, query)
        ids = [r["task_id"] for r in body["items"]]
        while body["next"] is not None:
            if between is not None:
                await between()
            body = await self.get(tenant, f"{query}&cursor={body['next']}")
            ids += [r["task_id"] for r in body["items"]]
        return ids


@pytest.fixture
async def world(nats_url: str, tmp_path: Path) -> AsyncIterator[World]:
    settings = Settings(nats_url=nats_url, store_dir=tmp_path)
    await apply_streams(settings)
    nc, js = await connect(settings, "test-listing")
    keys = {t: await issue_key(settings, t) for t in ("acme", "other")}
    try:
        async with gateway_client(settings) as client:
            yield World(settings, client, keys, await TaskRepo.open(js),
                        await ListingIndex.open(js, TASKS))
    finally:
        await nc.close()


async def test_cursor_pages_give_every_task_once_in_order_while_tasks_are_added(
        world: World) -> None:
    mine = [await world.task("acme") for _ in range(30)]
    theirs = [await world.task("other") for _ in range(5)]
    added: list[str] = []

    async def add() -> None:
        added.append(await world.task("acme"))
        theirs.append(await world.task("other"))

    ids = await world.all_pages("acme", between=add)
    assert ids == mine[::-1]
    assert len(added) == 4 and not set(ids) & set(theirs)
    first = await world.get("acme", "limit=3")
    assert [r["task_id"] for r in first["items"]] == added[::-1][:3]
    assert first["total"] == 34


async def test_other_tenants_tasks_never_appear(world: World) -> None:
    mine = [await world.task("acme", "completed") for _ in range(3)]
    theirs = [await world.task("other", "completed") for _ in range(25)]
    for query in ("limit=500", "limit=500&state=completed"):
        body = await world.get("acme", query)
        listed = {r["task_id"] for r in body["items"]}
        assert set(mine) <= listed and not listed & set(theirs)
        assert {r["tenant"] for r in body["items"]} == {"acme"}
    # A cursor from another tenant's page only moves within the caller's own list.
    token = (await world.get("other", "limit=2"))["next"]
    body = await world.get("acme", f"limit=500&cursor={token}")
    assert {r["tenant"] for r in body["items"]} <= {"acme"}


async def test_state_filter_follows_transitions(world: World) -> None:
    ids = [await world.task("acme") for _ in range(6)]
    for task_id in ids[:4]:
        await world.move(task_id, "ready")
    await world.move(ids[4], "rejected")
    for task_id in ids[:3]:
        await world.move(task_id, "running")
    await world.move(ids[0], "completed")
    await world.move(ids[1], "failed")
    await world.move(ids[1], "ready", generation=2)  # an on-call redrive
    expect = {"requested": [ids[5]], "ready": [ids[1], ids[3]], "rejected": [ids[4]],
              "running": [ids[2]], "completed": [ids[0]], "failed": []}
    for state, want in expect.items():
        body = await world.get("acme", f"limit=50&state={state}")
        got = [r["task_id"] for r in body["items"] if r["task_id"] in ids]
        assert sorted(got) == sorted(want), state
        assert all(r["state"] == state for r in body["items"])
        assert await world.all_pages("acme", f"limit=1&state={state}") == [
            r["task_id"] for r in body["items"]], state


async def test_offset_and_limit_still_work(world: World) -> None:
    for _ in range(12):
        await world.task("acme", "cancelled")
    everything = await world.get("acme", "limit=500")
    ids = [r["task_id"] for r in everything["items"]]
    assert everything["total"] == len(ids) >= 12 and everything["next"] is None
    for offset, limit in ((0, 5), (5, 5), (10, 3), (len(ids) - 2, 5), (len(ids), 5)):
        body = await world.get("acme", f"limit={limit}&offset={offset}")
        assert [r["task_id"] for r in body["items"]] == ids[offset:offset + limit]
        assert body["total"] == len(ids)
    cancelled = await world.get("acme", "limit=500&state=cancelled")
    cancelled_ids = [r["task_id"] for r in cancelled["items"]]
    body = await world.get("acme", "limit=4&offset=3&state=cancelled")
    assert [r["task_id"] for r in body["items"]] == cancelled_ids[3:7]
    token = (await world.get("acme", "limit=2"))["next"]
    await world.get("acme", f"limit=2&offset=1&cursor={token}", 400)
    await world.get("acme", f"limit=2&state=failed&cursor={token}", 400)
    await world.get("acme", "limit=2&cursor=garbage", 400)
    await world.get("acme", "limit=2&state=sleeping", 400)


async def test_the_handlers_consumers_list_submitted_tasks(world: World) -> None:
    """The real pipeline: gateway → TASKS → projector and task-index consumers."""
    nc, js = await connect(world.settings, "test-listing-pipeline")
    stop = asyncio.Event()
    tasks = await TaskRepo.open(js)
    subs = [Subscriber(PROJECTOR, event_decoder(), partial(project_event, tasks=tasks)),
            Subscriber(TASK_INDEX, event_decoder(), partial(
                index_event, tasks=tasks, index=await ListingIndex.open(js, TASKS)))]
    loops = [asyncio.create_task(run_subscriber(js, sub, stop, fetch_timeout=0.2))
             for sub in subs]
    try:
        submitted = []
        for _ in range(3):
            resp = await world.client.post("/v1/tasks", json=GOOD,
                                           headers=bearer(world.keys["other"]))
            assert resp.status == 202
            submitted.append((await resp.json())["task_id"])
        await _until(world, "other", "limit=50&state=requested", submitted)
        await publish_event(js, TaskRejectedEvent(
            source="test", subject=submitted[0], data=TaskRejected(
                task_id=submitted[0], tenant="other",
                errors=[ErrorDetail(field="x", code="bad", message="no")])))
        await _until(world, "other", "limit=50&state=rejected", submitted[:1])
        body = await world.get("other", "limit=50&state=requested")
        assert submitted[0] not in {r["task_id"] for r in body["items"]}
    finally:
        stop.set()
        await asyncio.gather(*loops)
        await nc.close()


async def _until(world: World, tenant: str, query: str, ids: list[str],
                 timeout_s: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        listed = {r["task_id"] for r in (await world.get(tenant, query))["items"]}
        if set(ids) <= listed:
            return
        assert asyncio.get_running_loop().time() < deadline, (query, ids, listed)
        await asyncio.sleep(0.1)


async def test_datasets_page_by_cursor_and_offset_within_the_tenant(world: World) -> None:
    nc, js = await connect(world.settings, "test-listing-datasets")
    try:
        repo = await DatasetRepo.open(js)
        mine = [f"ds-{world.run}-{i}" for i in range(9)]
        for i, ds_id in enumerate(mine):
            await repo.put(dataset(id=ds_id, tenant="acme", modality="CT" if i % 2 else "MR"))
            await repo.put(dataset(id=f"{ds_id}-x", tenant="other"))
            await repo.put(dataset(id=ds_id, tenant="acme",  # an update lists nothing new
                                   modality="CT" if i % 2 else "MR"))
    finally:
        await nc.close()

    async def pages(query: str) -> tuple[list[str], int]:
        body = await world.get_path("acme", f"/v1/datasets?{query}")
        ids, total = [d["id"] for d in body["items"]], body["total"]
        while body["next"] is not None:
            body = await world.get_path("acme", f"/v1/datasets?{query}&cursor={body['next']}")
            ids += [d["id"] for d in body["items"]]
        return [i for i in ids if world.run in i], total

    listed, total = await pages("limit=4")
    assert listed == mine[::-1] and total >= 9
    ct, ct_total = await pages("limit=2&modality=CT")
    assert ct == mine[1::2][::-1] and ct_total >= 4
    body = await world.get_path("acme", "/v1/datasets?limit=3&offset=3")
    assert [d["id"] for d in body["items"]] == mine[::-1][3:6]
