"""``GET /v1/tasks/{id}/search`` and ``GET /v1/tasks?parent=`` (issue 18) over HTTP, with
in-memory KV buckets (no NATS): a search's trials under their parent, tenant-scoped."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway import search
from gateway.app_keys import JS, LIMITER, TASK_LISTS, TASKS
from gateway.auth import KEYS, KeyCache, auth_middleware
from gateway.errors import error_middleware
from gateway.ratelimit import RateLimiter
from gateway.tasks import routes as task_routes
from handlers.enrich import WeightsRef, enrich
from infra.bus.names import KV_SEARCHES, KV_TASKS
from infra.kv import TaskRepo
from schemas.record import TaskRecord
from schemas.search_state import SearchState, SearchTrial
from schemas.tenancy import ApiKeyRecord
from tests.support import fake_bus, fake_kv
from tests.support.factories import dataset, request

TOKEN = "rt_0123456789abcdef_secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Keys:
    async def authenticate(self, token: str) -> ApiKeyRecord | None:
        if token != TOKEN:
            return None
        return ApiKeyRecord(id="0123456789abcdef", tenant="default", sha256="0" * 64,
                            created_at=T0)


class Weights:
    def find(self, entry_id: str) -> WeightsRef | None:
        return None


class JS_(fake_bus.FakeJetStream):
    def __init__(self) -> None:
        super().__init__()
        self.kv = fake_kv.FakeJetStream(KV_SEARCHES, KV_TASKS)

    async def key_value(self, bucket: str) -> fake_kv.FakeKeyValue:
        return await self.kv.key_value(bucket)


def rec(task_id: str, tenant: str = "default", **over: Any) -> TaskRecord:
    return TaskRecord(task_id=task_id, tenant=tenant, name="n", state="running",
                      flow="general", dataset_id="ds1", created_at=T0, updated_at=T0, **over)


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    js = JS_()
    tasks = await TaskRepo.open(js.as_js())
    spec = enrich(request(task_id="p1", tuning={"mode": "search"}), dataset(), Weights())
    trials = [SearchTrial(number=k, task_id=f"p1-t{k}", wave=k // 2, params={"x": k},
                          state="complete" if k < 2 else "running",
                          value=0.5 + k / 10 if k < 2 else None) for k in range(3)]
    state = SearchState(task_id="p1", tenant="default", spec=spec, started_at=T0,
                        deadline=T0, trials=trials)
    kv = await js.key_value(KV_SEARCHES)
    await kv.put("p1", state.model_dump_json().encode())
    await tasks.kv.put("p1", rec("p1"))
    for k in range(3):
        await tasks.kv.put(f"p1-t{k}", rec(f"p1-t{k}", parent_task_id="p1"))
    await tasks.kv.put("other", rec("other", tenant="acme"))
    app = web.Application(middlewares=[error_middleware, auth_middleware])
    app[KEYS] = KeyCache(Keys(), ttl_s=0)  # type: ignore[arg-type]
    app[LIMITER] = RateLimiter(1000.0, 1000)
    app[JS] = js.as_js()
    app[TASKS] = tasks
    app[TASK_LISTS] = SimpleNamespace(direct=None)  # type: ignore[assignment,misc]
    app.add_routes(task_routes)
    app.add_routes(search.routes)
    async with TestClient(TestServer(app)) as c:
        yield c


async def test_the_search_view_names_the_best_trial_so_far(client: TestClient) -> None:
    resp = await client.get("/v1/tasks/p1/search", headers=AUTH)
    body = await resp.json()
    assert resp.status == 200, body
    assert body["objective"] == "auc" and body["best"] == 1 and body["best_value"] == 0.6
    assert [t["state"] for t in body["trials"]] == ["complete", "complete", "running"]
    assert (await client.get("/v1/tasks/p1-t0/search", headers=AUTH)).status == 404
    assert (await client.get("/v1/tasks/other/search", headers=AUTH)).status == 404


async def test_trials_are_listed_under_their_parent(client: TestClient) -> None:
    resp = await client.get("/v1/tasks?parent=p1&limit=2", headers=AUTH)
    body = await resp.json()
    assert resp.status == 200 and body["total"] == 3
    assert [t["task_id"] for t in body["items"]] == ["p1-t0", "p1-t1"]
    assert {t["parent_task_id"] for t in body["items"]} == {"p1"}
    empty = await (await client.get("/v1/tasks?parent=other", headers=AUTH)).json()
    assert empty == {"items": [], "total": 0, "next": None}
    assert (await client.get("/v1/tasks?parent=a.b", headers=AUTH)).status == 400
