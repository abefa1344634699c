"""The gateway's HTTP contract against a real nats-server (no handlers running)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from infra.settings import Settings
from tests.support.tenancy_utils import apply_streams, gateway_client, issue_key

pytestmark = pytest.mark.integration

GOOD: dict[str, Any] = {
    "name": "ICH v1", "flow": "general", "task_type": "classification", "dataset_id": "ds1",
    "model": {"mode": "manual", "network": "mobilenetv3_small_100", "pretrained": False},
}


@pytest.fixture
async def client(nats_server: str, tmp_path: Path) -> AsyncIterator[TestClient]:
    settings = Settings(nats_url=nats_server, store_dir=tmp_path, max_request_bytes=4096)
    await apply_streams(settings)
    async with gateway_client(settings, await issue_key(settings, "default")) as c:
        yield c


async def error_of(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert set(body["error"]) == {"code", "message", "details"}
    return dict(body["error"])


async def test_submit_answers_202_with_location_and_is_readable(client: TestClient) -> None:
    resp = await client.post("/v1/tasks", json=GOOD)
    assert resp.status == 202
    body = await resp.json()
    assert body["state"] == "requested"
    assert resp.headers["Location"] == f"/v1/tasks/{body['task_id']}"
    got = await client.get(resp.headers["Location"])
    assert got.status == 200
    record = await got.json()
    assert record["task_id"] == body["task_id"] and record["state"] == "requested"


async def test_idempotency_key_gives_the_same_task(client: TestClient) -> None:
    ids = set()
    for _ in range(3):
        resp = await client.post("/v1/tasks", json=GOOD, headers={"Idempotency-Key": "abc-1"})
        ids.add((await resp.json())["task_id"])
    assert len(ids) == 1


async def test_malformed_json_is_400(client: TestClient) -> None:
    err = await error_of(await client.post("/v1/tasks", data=b"{nope",
                                           headers={"Content-Type": "application/json"}), 400)
    assert err["code"] == "invalid_json"


async def test_missing_and_wrong_fields_are_422_naming_each(client: TestClient) -> None:
    err = await error_of(await client.post("/v1/tasks", json={"flow": "general",
                                                              "task_type": 3}), 422)
    fields = {d["field"] for d in err["details"]}
    assert {"name", "dataset_id", "task_type"} <= fields
    err = await error_of(await client.post("/v1/tasks", json={**GOOD, "colour": "red"}), 422)
    assert [d["field"] for d in err["details"]] == ["colour"]


async def test_body_over_limit_is_413(client: TestClient) -> None:
    err = await error_of(await client.post("/v1/tasks", json={**GOOD, "description": "x" * 9000}),
                         413)
    assert err["code"] == "request_entity_too_large"


async def test_unknown_task_and_bad_paging(client: TestClient) -> None:
    await error_of(await client.get("/v1/tasks/doesnotexist"), 404)
    await error_of(await client.get("/v1/tasks/..%2F..%2Fetc"), 404)
    err = await error_of(await client.get("/v1/tasks?limit=abc"), 400)
    assert "limit" in err["message"]
    resp = await client.get("/v1/tasks?limit=5")
    page = await resp.json()
    assert set(page) == {"items", "total", "next"} and len(page["items"]) <= 5


async def test_health_and_readiness(client: TestClient) -> None:
    assert (await client.get("/healthz")).status == 200
    assert (await client.get("/readyz")).status == 200
