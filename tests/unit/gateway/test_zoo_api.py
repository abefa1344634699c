"""``/v1/zoo`` routes over HTTP (aiohttp test server, no NATS: the zoo is global data)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway import zoo
from gateway.errors import error_middleware
from gateway.openapi import OPERATIONS
from handlers.catalog.zoo import catalog


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    app = web.Application(middlewares=[error_middleware])
    app.add_routes(zoo.routes)
    async with TestClient(TestServer(app)) as c:
        yield c


async def test_list_is_paged_and_filtered(client: TestClient) -> None:
    resp = await client.get("/v1/zoo", params={"limit": "5", "offset": "2"})
    body = await resp.json()
    assert resp.status == 200 and body["total"] == len(catalog().entries)
    assert [e["id"] for e in body["items"]] == [e.id for e in catalog().entries[2:7]]
    resp = await client.get("/v1/zoo", params={"task_type": "detection", "limit": "500"})
    body = await resp.json()
    assert body["total"] == len(body["items"]) >= 20
    assert all(e["task_types"] == ["detection"] for e in body["items"])
    resp = await client.get("/v1/zoo", params={"family": "swin", "q": "in22k"})
    body = await resp.json()
    assert body["total"] >= 1 and all("swin" in e["id"] for e in body["items"])


@pytest.mark.parametrize(("query", "status", "field"), [
    ({"task_type": "captioning"}, 422, "task_type"),
    ({"family": "lenet"}, 422, "family"),
    ({"q": "x" * 201}, 422, "q"),
    ({"limit": "-1"}, 400, None),
])
async def test_bad_filters_name_the_parameter(client: TestClient, query: dict[str, str],
                                              status: int, field: str | None) -> None:
    resp = await client.get("/v1/zoo", params=query)
    body = await resp.json()
    assert resp.status == status
    if field:
        assert [d["field"] for d in body["error"]["details"]] == [field]


async def test_show_by_id_and_by_alias_404_otherwise(client: TestClient) -> None:
    resp = await client.get("/v1/zoo/resnet50.a1_in1k")
    entry = await resp.json()
    assert resp.status == 200 and entry["network"] == "resnet50"
    assert {"params_m", "input_size", "mean", "std", "speed", "licence", "source"} <= set(entry)
    alias = await (await client.get("/v1/zoo/resnet10t")).json()
    assert alias["id"] == "resnet10t.c3_in1k"
    resp = await client.get("/v1/zoo/no_such_net")
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"


async def test_suggest_answers_ranked_items_with_reasons(client: TestClient) -> None:
    body = {"task_type": "classification",
            "data_type": {"modality": "CT", "image_size": 512, "channels": 3, "num_cases": 100},
            "preference": {"goal": "fastest", "target": "edge"}, "limit": 3}
    first = await (await client.post("/v1/zoo/suggest", json=body)).json()
    again = await (await client.post("/v1/zoo/suggest", json=body)).json()
    assert first == again and len(first["items"]) == 3
    item = first["items"][0]
    assert set(item) == {"entry", "score", "reason", "cost"}
    assert "fastest on edge" in item["reason"] and item["cost"]["relative_speed"] >= 1
    assert [i["score"] for i in first["items"]] == sorted(
        (i["score"] for i in first["items"]), reverse=True)


@pytest.mark.parametrize(("body", "field"), [
    ({"task_type": "classification", "preference": {"goal": "cheapest"}}, "preference.goal"),
    ({"task_type": "classification", "data_type": {"num_cases": 0}}, "data_type.num_cases"),
    ({"task_type": "classification", "colour": "red"}, "colour"),
    ({"data_type": {}}, "task_type"),
])
async def test_suggest_rejects_bad_bodies_naming_the_field(client: TestClient,
                                                           body: dict[str, object],
                                                           field: str) -> None:
    resp = await client.post("/v1/zoo/suggest", json=body)
    err = (await resp.json())["error"]
    assert resp.status == 422 and [d["field"] for d in err["details"]] == [field]


async def test_suggest_needs_json(client: TestClient) -> None:
    resp = await client.post("/v1/zoo/suggest", data=b"task_type=classification",
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 415


def test_routes_are_documented() -> None:
    documented = {(op.method, op.path) for op in OPERATIONS}
    assert {("get", "/v1/zoo"), ("get", "/v1/zoo/{entry}"),
            ("post", "/v1/zoo/suggest")} <= documented
