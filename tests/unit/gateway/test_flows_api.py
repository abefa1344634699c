"""``GET /v1/flows`` over HTTP (aiohttp test server, no NATS: the flows table is global data)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway import flows
from gateway.app_keys import LIMITER
from gateway.auth import KEYS, KeyCache, auth_middleware
from gateway.errors import error_middleware
from gateway.openapi import OPERATIONS, document
from gateway.ratelimit import RateLimiter
from handlers.catalog.flows import list_flows
from schemas.tenancy import ApiKeyRecord

TOKEN = "rt_0123456789abcdef_secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Keys:
    """The one key the tests use; anything else is unknown."""

    async def authenticate(self, token: str) -> ApiKeyRecord | None:
        if token != TOKEN:
            return None
        return ApiKeyRecord(id="0123456789abcdef", tenant="default", sha256="0" * 64,
                            created_at=datetime(2024, 1, 1, tzinfo=UTC))


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    app = web.Application(middlewares=[error_middleware, auth_middleware])
    app[KEYS] = KeyCache(Keys(), ttl_s=0)  # type: ignore[arg-type]
    app[LIMITER] = RateLimiter(1000.0, 1000)
    app.add_routes(flows.routes)
    async with TestClient(TestServer(app)) as c:
        yield c


async def test_lists_the_three_flows_as_items_and_total(client: TestClient) -> None:
    resp = await client.get("/v1/flows", headers=AUTH)
    body = await resp.json()
    assert resp.status == 200 and body["total"] == 3
    assert [r["flow"] for r in body["items"]] == ["general", "specialized", "retrain"]
    assert body["items"] == [r.model_dump(mode="json") for r in list_flows()]
    general, special, retrain = body["items"]
    assert general["network"] == ["auto", "manual"]
    assert general["tuning"] == ["auto_with_preferences", "manual", "search"]
    assert {"task_type": "detection", "annotation_types": ["boxes"]} in general["annotations"]
    assert special["network"] == ["preset"] and special["preset"] == "required"
    assert retrain["network"] == ["base_task"] and retrain["base_task_id"] == "required"
    assert special["tuning"] == retrain["tuning"] == [
        "auto_without_preferences", "manual", "search"]


async def test_pages_like_every_list(client: TestClient) -> None:
    body = await (await client.get("/v1/flows", params={"limit": "1", "offset": "1"},
                                   headers=AUTH)).json()
    assert body["total"] == 3 and [r["flow"] for r in body["items"]] == ["specialized"]
    resp = await client.get("/v1/flows", params={"limit": "x"}, headers=AUTH)
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "invalid_query"


async def test_needs_an_api_key(client: TestClient) -> None:
    resp = await client.get("/v1/flows")
    assert resp.status == 401 and (await resp.json())["error"]["code"] == "unauthorized"
    resp = await client.get("/v1/flows", headers={"Authorization": "Bearer rt_nope"})
    assert resp.status == 401


def test_the_route_is_documented() -> None:
    assert ("get", "/v1/flows") in {(op.method, op.path) for op in OPERATIONS}
    doc = document.__wrapped__()  # not cached: other modules may register routes later
    op = doc["paths"]["/v1/flows"]["get"]
    assert op["operationId"] == "listFlows" and "security" not in op  # not public
    assert op["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/FlowPage"}
