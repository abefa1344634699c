"""Issue 17 limits through the real gateway (real nats-server with auth, local store):
hostile previews, preview sizes and cache eviction, event-stream caps, and the
per-address limit on unauthenticated traffic (before any KV read)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.auth import KEYS
from gateway.previews import PREVIEWER
from handlers.datasets_import.base import ImportOptions
from handlers.datasets_import.pipeline import import_dataset
from infra.bus.topology import connect
from infra.kv import DatasetRepo
from infra.settings import Settings
from infra.store import open_store
from tests.support.dataset_utils import classification_folder
from tests.support.hostile import deflated_dicom, rle_dicom
from tests.support.tenancy_utils import apply_streams, bearer, gateway_client, issue_key

pytestmark = pytest.mark.integration

TASK = {"name": "limits", "flow": "general", "task_type": "classification", "dataset_id": "ds1",
        "model": {"mode": "manual", "network": "mobilenetv3_small_100", "pretrained": False}}


@pytest.fixture(scope="module")
async def world(nats_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("limits")
    settings = Settings(nats_url=nats_server, store_dir=tmp / "store", rate_limit_per_s=1000,
                        rate_limit_burst=1000, sse_max_per_key=2, sse_max_total=3,
                        preview_cache_entries=2)
    await apply_streams(settings)
    tenant = f"lim{uuid.uuid4().hex[:8]}"
    nc, js = await connect(settings, "test-limits")
    try:
        report = await import_dataset(
            open_store(settings), await DatasetRepo.open(js), classification_folder(tmp / "src", 4),
            ImportOptions(name="limits", format="folder-csv", tenant=tenant))
    finally:
        await nc.close()
    assert report.registered, report.problems
    keys = [await issue_key(settings, tenant, f"k{i}") for i in range(2)]
    return {"settings": settings, "tenant": tenant, "ds": report.dataset_id, "keys": keys,
            "tmp": tmp}


def _case_image(world: dict[str, Any], case: str) -> str:
    store = open_store(world["settings"])
    return next(k for k in store.list(f"datasets/{world['ds']}/cases/{case}/")
                if k.endswith(".dcm"))


@pytest.mark.parametrize("build", [deflated_dicom, rle_dicom], ids=["deflate", "rle"])
async def test_hostile_preview_is_a_422_naming_the_file(world: dict[str, Any], build: Any
                                                        ) -> None:
    """A few MB that declare 23,170 x 23,170 pixels: refused from the header (the RSS of
    such a refusal is measured in tests/unit/gateway/test_limits_decode.py)."""
    store = open_store(world["settings"])
    key = _case_image(world, "c1")
    original = store.get_bytes(key)
    store.put_file(key, build(world["tmp"] / f"evil-{build.__name__}.dcm"))
    try:
        async with gateway_client(world["settings"], world["keys"][0]) as c:
            resp = await c.get(f"/v1/datasets/{world['ds']}/cases/c1/preview.png?window=bone")
            body = await resp.json()
    finally:
        store.put_bytes(key, original)
    assert resp.status == 422, body
    assert body["error"]["code"] == "case_unreadable"
    message = body["error"]["message"]
    assert "c1" in message and key.rsplit("/", 1)[-1] in message and "MiB" in message


async def test_preview_sizes_are_snapped_and_the_cache_evicts(world: dict[str, Any]) -> None:
    store = open_store(world["settings"])
    base = f"/v1/datasets/{world['ds']}/cases/c2/preview.png"
    prefix = f"datasets/{world['ds']}/previews/c2/"
    async with gateway_client(world["settings"], world["keys"][0]) as c:
        first = await c.get(f"{base}?size=100&window=brain")
        assert first.status == 200 and first.headers["X-Preview-Size"] == "128"
        again = await c.get(f"{base}?size=128&window=brain")  # the same picture, cached
        assert again.headers["ETag"] == first.headers["ETag"]
        assert again.headers["X-Preview-Cache"] == "hit"
        assert len(store.list(prefix)) == 1
        for window in ("bone", "lung"):  # two more: over the cap of 2 entries
            assert (await c.get(f"{base}?size=128&window={window}")).status == 200
        assert len(store.list(prefix)) == 2  # before: one file per (window, size), for ever
        evicted = await c.get(f"{base}?size=128&window=brain")
        assert evicted.headers["X-Preview-Cache"] == "miss"
        for bad in ("size=8", "size=5000", "size=big"):
            assert (await c.get(f"{base}?{bad}")).status == 400, bad


async def _open_stream(c: TestClient, task_id: str, key: str) -> Any:
    return await c.get(f"/v1/tasks/{task_id}/events", headers=bearer(key))


async def test_event_streams_are_capped_per_key_and_in_total(world: dict[str, Any]) -> None:
    one, two = world["keys"]
    async with gateway_client(world["settings"]) as c:
        submitted = await c.post("/v1/tasks", json=TASK, headers=bearer(one))
        assert submitted.status == 202, await submitted.text()
        task_id = (await submitted.json())["task_id"]
        opened = [await _open_stream(c, task_id, one) for _ in range(2)]
        assert all(r.status == 200 for r in opened)
        third = await _open_stream(c, task_id, one)  # before: no cap at all
        body = await third.json()
        assert third.status == 429 and body["error"]["code"] == "too_many_streams"
        assert int(third.headers["Retry-After"]) >= 1 and "API key" in body["error"]["message"]
        other = await _open_stream(c, task_id, two)  # another key: its own two
        assert other.status == 200
        full = await _open_stream(c, task_id, two)  # but 3 in total
        assert full.status == 429 and "gateway" in (await full.json())["error"]["message"]
        for resp in (*opened, other):
            resp.close()


class CountingRepo:
    def __init__(self, inner: Any) -> None:
        self.inner, self.reads = inner, 0

    async def authenticate(self, token: str) -> Any:
        self.reads += 1
        return await self.inner.authenticate(token)


async def test_unauthenticated_traffic_is_limited_by_address_before_kv(
        world: dict[str, Any]) -> None:
    settings = world["settings"].model_copy(update={"unauth_rate_per_s": 0.5,
                                                    "unauth_burst": 4})
    key = world["keys"][0]
    async with gateway_client(settings) as c:
        counting = CountingRepo(c.app[KEYS]._repo)
        c.app[KEYS]._repo = counting  # type: ignore[assignment]
        assert (await c.get("/v1/tasks", headers=bearer(key))).status == 200  # looked up
        statuses = []
        for _ in range(6):
            made_up = f"rt_{uuid.uuid4().hex[:16]}_{'x' * 43}"
            statuses.append((await c.get("/v1/tasks", headers=bearer(made_up))).status)
        assert statuses == [401] * 4 + [429] * 2  # the valid key's token was given back
        assert counting.reads == 5  # the valid key and four made-up ones: no more KV reads
        limited = await c.get("/v1/tasks")  # no key at all: the same address bucket
        assert limited.status == 429 and int(limited.headers["Retry-After"]) >= 1
        assert (await c.get("/v1/tasks", headers=bearer(key))).status == 200  # cached key
        assert (await c.get("/healthz")).status == 200  # probes are never limited


async def test_a_full_process_budget_answers_503_with_retry_after(world: dict[str, Any]) -> None:
    settings = world["settings"].model_copy(update={"decode_budget_wait_s": 0.2,
                                                    "decode_budget_process_bytes": 64 << 20})
    base = f"/v1/datasets/{world['ds']}/cases/c3/preview.png?window=lung&size=32"
    async with gateway_client(settings, world["keys"][0]) as c:
        budget = c.app[PREVIEWER].budget
        with budget.reserve((64 << 20) - 100):  # other decodes hold all but 100 bytes
            busy = await c.get(base)
            body = await busy.json()
        assert busy.status == 503 and body["error"]["code"] == "decoding_busy", body
        assert int(busy.headers["Retry-After"]) >= 1
        assert budget.in_use == 0
        assert (await c.get(base)).status == 200  # room again: rendered


async def test_a_burst_on_a_key_not_looked_up_yet_is_not_limited_as_unauthenticated(
        world: dict[str, Any]) -> None:
    """A client's first 64 concurrent requests share one KV read and pay one token."""
    settings = world["settings"].model_copy(update={"unauth_rate_per_s": 0.5,
                                                    "unauth_burst": 4})
    key = world["keys"][1]
    async with gateway_client(settings) as c:
        counting = CountingRepo(c.app[KEYS]._repo)
        c.app[KEYS]._repo = counting  # type: ignore[assignment]
        statuses = await asyncio.gather(*(c.get("/v1/tasks", headers=bearer(key))
                                          for _ in range(64)))
        assert [r.status for r in statuses] == [200] * 64
        assert counting.reads == 1
