"""Issue 17: error bodies leak nothing internal, and odd ids answer 404, never 500.

Many error paths of the real gateway (real nats-server, local store) are provoked,
including a store and a bus that fail with messages full of internals; every body
is scanned (tests/support/leaks.py; the same scan runs over the whole session from
tests/conftest.py). A property-based test sends generated ids to every id route.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import nats.errors
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.app import create_app
from gateway.app_keys import STORE, TASKS
from handlers.datasets_import.base import ImportOptions
from handlers.datasets_import.pipeline import import_dataset
from infra.bus.topology import connect
from infra.errors import TransientError
from infra.kv import DatasetRepo
from infra.settings import Settings
from infra.store import StoreUnavailable, open_store
from tests.support.dataset_utils import classification_folder
from tests.support.leaks import find_leaks
from tests.support.tenancy_utils import apply_streams, bearer, gateway_client, issue_key

pytestmark = pytest.mark.integration

INTERNALS = ("bucket 'radtrain-prod-7' at http://127.0.0.1:8333 (file:///tmp/store/x): "
             "EndpointConnectionError('nats://services:pw@10.0.0.5:4222')")


@pytest.fixture(scope="module")
async def world(nats_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("error-bodies")
    cfg = Settings(nats_url=nats_server, store_dir=tmp / "store", rate_limit_per_s=10_000,
                   rate_limit_burst=10_000, unauth_rate_per_s=10_000, unauth_burst=10_000,
                   max_request_bytes=4096)
    await apply_streams(cfg)
    tenant = f"err{uuid.uuid4().hex[:8]}"
    nc, js = await connect(cfg, "test-errors")
    try:
        report = await import_dataset(open_store(cfg), await DatasetRepo.open(js),
                                      classification_folder(tmp / "src", 2),
                                      ImportOptions(name="errors", format="folder-csv",
                                                    tenant=tenant))
    finally:
        await nc.close()
    assert report.registered, report.problems
    return {"settings": cfg, "ds": report.dataset_id, "key": await issue_key(cfg, tenant)}


class BrokenStore:
    """A store whose every call fails with a message full of internals."""

    def __getattr__(self, name: str) -> Any:
        def fail(*args: Any, **kwargs: Any) -> Any:
            raise StoreUnavailable(f"{name}: {INTERNALS}")
        return fail


async def _errors(c: TestClient, calls: list[tuple[str, str, dict[str, Any]]]
                  ) -> list[tuple[int, str]]:
    out = []
    for method, url, kwargs in calls:
        resp = await c.request(method, url, **kwargs)
        assert resp.status >= 400, (method, url, resp.status)
        out.append((resp.status, await resp.text()))
    return out


def _assert_clean(bodies: list[tuple[int, str]]) -> None:
    leaky = [(status, text, find_leaks(text, ["radtrain-prod-7"])) for status, text in bodies]
    assert [x for x in leaky if x[2]] == []
    for _status, text in bodies:
        assert set(json.loads(text)["error"]) == {"code", "message", "details"}, text


async def test_client_errors_leak_nothing(world: dict[str, Any]) -> None:
    ds = world["ds"]
    async with gateway_client(world["settings"], world["key"]) as c:
        bodies = await _errors(c, [
            ("GET", "/v1/tasks", {"headers": {"Authorization": "Bearer nope"}}),
            ("GET", "/v1/tasks", {"headers": {"Authorization": ""}}),
            ("GET", "/v1/tasks/nope", {}), ("GET", "/v1/tasks?limit=x", {}),
            ("GET", "/v1/tasks/..%2F..%2Ftmp%2Fx", {}),
            ("POST", "/v1/tasks", {"data": b"{", "headers": {"Content-Type": "application/json"}}),
            ("POST", "/v1/tasks", {"json": {"flow": 3}}),
            ("POST", "/v1/tasks", {"data": b"x", "headers": {"Content-Type": "text/plain"}}),
            ("POST", "/v1/tasks", {"json": {"description": "x" * 9000}}),
            ("POST", "/v1/datasets/imports",
             {"json": {"name": "x", "format": "folder-csv", "source": "/tmp/../etc"}}),
            ("GET", f"/v1/datasets/{ds}/cases/zz/preview.png", {}),
            ("GET", f"/v1/datasets/{ds}/cases/c0/preview.png?size=5000", {}),
            ("GET", "/v1/webhooks/nope", {}), ("GET", "/v1/zoo/nope", {}),
            ("GET", "/v1/presets/nope", {}), ("GET", "/v1/datasets/imports/nope", {}),
            ("DELETE", "/v1/tasks", {}),
        ])
    _assert_clean(bodies)


async def test_unavailable_store_and_bus_leak_nothing(world: dict[str, Any]) -> None:
    ds = world["ds"]
    async with gateway_client(world["settings"], world["key"]) as c:
        app = c.app
        with pytest.warns(DeprecationWarning):  # a started app's state: only in a test
            app[STORE] = BrokenStore()  # type: ignore[assignment]
        store_bodies = await _errors(c, [
            ("GET", f"/v1/datasets/{ds}/cases", {}),
            ("GET", f"/v1/datasets/{ds}/cases/c0/preview.png", {}),
        ])
        tasks, calls = app[TASKS], []

        async def bus_down(task_id: str) -> Any:
            calls.append(task_id)
            raise nats.errors.NoRespondersError()

        async def contended(task_id: str) -> Any:
            raise TransientError("kv_conflict", INTERNALS)

        async def crash(task_id: str) -> Any:
            raise RuntimeError(INTERNALS)

        bodies = []
        for broken in (bus_down, contended, crash):
            tasks.get = broken  # type: ignore[method-assign]
            bodies += await _errors(c, [("GET", "/v1/tasks/t1", {})])
    assert [s for s, _ in store_bodies] == [503, 503] and calls == ["t1"]
    assert [s for s, _ in bodies] == [503, 503, 500]
    _assert_clean(store_bodies + bodies)


def test_the_scanner_finds_leaks() -> None:
    """The scan itself can fail: each kind of internal in a body is found."""
    leaky = {
        "exception repr": "bus down: NoRespondersError()",
        "traceback": "Traceback (most recent call last):\n  File \"x.py\", line 3",
        "internal URI": "see file:///srv/store/runs/x/model.onnx",
        "loopback or private address": "S3 at http://127.0.0.1:8333 failed",
        "server path": "cannot open /tmp/radtrain-preview-x/image",
    }
    for kind, text in leaky.items():
        body = json.dumps({"error": {"code": "x", "message": text, "details": []}})
        assert kind in find_leaks(body), (kind, text)
    assert find_leaks("no such object in bucket ds0123456789", ["ds0123456789"])
    assert find_leaks(json.dumps({"error": {"code": "not_found", "message":
                                            "task 'x' not found", "details": []}})) == []


# --- odd ids: 404, never 500 (a real server in a thread, so hypothesis can drive it) ---

ID_ROUTES = (
    ("GET", "/v1/tasks/{}"), ("GET", "/v1/tasks/{}/artifacts"),
    ("GET", "/v1/tasks/{}/artifacts/model.onnx"), ("GET", "/v1/tasks/{}/events"),
    ("POST", "/v1/tasks/{}/cancel"), ("GET", "/v1/tasks/{}/search"),
    ("GET", "/v1/datasets/{}"), ("GET", "/v1/datasets/{}/cases"),
    ("GET", "/v1/datasets/{}/cases/c0/preview.png"), ("GET", "/v1/datasets/imports/{}"),
    ("GET", "/v1/webhooks/{}"), ("GET", "/v1/webhooks/{}/deliveries"),
    ("DELETE", "/v1/webhooks/{}"), ("POST", "/v1/webhooks/{}/rotate-secret"),
    ("GET", "/v1/zoo/{}"), ("GET", "/v1/presets/{}"),
)


@pytest.fixture(scope="module")
def live_gateway(world: dict[str, Any]) -> Iterator[tuple[int, str]]:
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(create_app(world["settings"]))
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield port, world["key"]
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


ODD_IDS = st.one_of(
    st.text(min_size=1, max_size=40),
    st.sampled_from(["abc\n", "abc\r\n", "t1\x00", " t1", "t1 ", "..", ".", "a" * 129,
                     "A.B", "a*", "a>", "é", "\u202e", "%", "a/b", "a\\b", "-a", "_a"]),
    st.builds(lambda s, tail: s + tail, st.from_regex(r"[a-z0-9]{1,20}", fullmatch=True),
              st.sampled_from(["\n", "\r", "\t", "\x0b", "\x00", ".", ">", "*", " "])),
)


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=ODD_IDS, route=st.sampled_from(ID_ROUTES))
def test_odd_ids_answer_404_never_500(live_gateway: tuple[int, str], raw: str,
                                      route: tuple[str, str]) -> None:
    port, key = live_gateway
    method, template = route
    path = template.format(quote(raw, safe=""))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        body = b"{}" if method == "POST" else None
        conn.request(method, path, body=body, headers={**bearer(key),
                                                       "Content-Type": "application/json"})
        resp = conn.getresponse()
        text = resp.read().decode("utf-8", "replace")
    finally:
        conn.close()
    assert resp.status == 404, (method, path, resp.status, text)
    assert find_leaks(text) == [], text


