"""Fair webhook delivery (issue 17) through the real handlers loop and a local HTTP server.

Tenant A's subscriptions point at a tarpit (answers after a minute: each attempt
ends at the HTTP timeout); tenant B's at a prompt endpoint. B's deliveries
arrive within a bound while A's hang, and A never holds more than its share of
the delivery workers. Then a failing endpoint opens its circuit (shown by the
webhooks API), gets no traffic while open, and closes after a successful probe.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from handlers.app import run as run_handlers
from infra.bus.publish import publish_event
from infra.bus.topology import connect
from infra.settings import Settings
from schemas.events import TaskCompleted, TaskCompletedEvent, TaskRequestedEvent
from tests.support.factories import request
from tests.support.tenancy_utils import apply_streams, gateway_client, issue_key

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


@dataclass
class Endpoints:
    """``/tarpit/<n>`` sleeps; ``/ok/<n>`` answers 204; ``/flaky`` fails while ``failing``."""

    server: TestServer
    received: dict[str, float] = field(default_factory=dict)  # task id -> arrival
    tarpit_now: int = 0
    tarpit_peak: int = 0
    flaky_calls: list[float] = field(default_factory=list)
    failing: bool = True

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.port}/{path}"


@pytest.fixture
async def endpoints() -> AsyncIterator[Endpoints]:
    holder: dict[str, Endpoints] = {}

    async def tarpit(request: web.Request) -> web.Response:
        ep = holder["e"]
        ep.tarpit_now += 1
        ep.tarpit_peak = max(ep.tarpit_peak, ep.tarpit_now)
        try:
            await asyncio.sleep(60)
        finally:
            ep.tarpit_now -= 1
        return web.Response(status=204)

    async def ok(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        holder["e"].received.setdefault(body["subject"], time.monotonic())
        return web.Response(status=204)

    async def flaky(request: web.Request) -> web.Response:
        ep = holder["e"]
        ep.flaky_calls.append(time.monotonic())
        return web.Response(status=503 if ep.failing else 204)

    app = web.Application()
    app.router.add_post("/tarpit/{n}", tarpit)
    app.router.add_post("/ok/{n}", ok)
    app.router.add_post("/flaky", flaky)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    holder["e"] = Endpoints(server=server)
    yield holder["e"]
    await server.close()


@pytest.fixture
async def handlers_factory() -> AsyncIterator[Callable[[Settings], Awaitable[None]]]:
    running: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    async def start(settings: Settings) -> None:
        await apply_streams(settings)
        stop = asyncio.Event()
        running.append((stop, asyncio.create_task(run_handlers(settings, stop))))

    yield start
    for stop, task in running:
        stop.set()
        await asyncio.wait_for(task, 30)


def _settings(nats_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "nats_url": nats_url, "store_dir": tmp_path / "store", "webhooks_allow_private": True,
        "webhook_timeout_s": 5.0, "webhook_retry_base_s": 0.2,
        "webhook_retry_max_delay_s": 0.5, "webhook_retry_window_s": 8.0, "api_key_cache_s": 0,
        "webhook_workers": 8, "webhook_per_tenant": 2, "webhook_per_endpoint": 1,
        "webhook_defer_s": 0.2}
    return Settings(**(base | overrides))


async def _complete_tasks(settings: Settings, tenant: str, n: int) -> dict[str, float]:
    """``n`` tasks of ``tenant``, each requested then completed: task id -> publish time."""
    out: dict[str, float] = {}
    nc, js = await connect(settings, "test-fair")
    try:
        for _ in range(n):
            task_id = f"fair-{uuid.uuid4().hex[:10]}"
            await publish_event(js, TaskRequestedEvent(source="test", subject=task_id,
                                                       data=request(task_id=task_id,
                                                                    tenant=tenant)))
            await publish_event(js, TaskCompletedEvent(source="test", subject=task_id,
                                                       data=TaskCompleted(
                task_id=task_id, metrics={}, artifacts=[], duration_s=1.0)))
            out[task_id] = time.monotonic()
    finally:
        await nc.close()
    return out


async def _hook(client: TestClient, url: str) -> str:
    resp = await client.post("/v1/webhooks", json={"url": url,
                                                   "event_types": ["task.completed"]})
    assert resp.status == 201, await resp.text()
    return str((await resp.json())["webhook"]["id"])


async def eventually(check: Callable[[], Awaitable[Any]], timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (result := await check()):
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)
    return result


async def test_a_tarpit_tenant_does_not_delay_another_tenant(
        nats_server: str, tmp_path: Path, endpoints: Endpoints,
        handlers_factory: Callable[[Settings], Awaitable[None]]) -> None:
    settings = _settings(nats_server, tmp_path)
    await handlers_factory(settings)
    a, b = f"tarpit{uuid.uuid4().hex[:6]}", f"prompt{uuid.uuid4().hex[:6]}"
    async with gateway_client(settings, await issue_key(settings, a)) as ca, \
            gateway_client(settings, await issue_key(settings, b)) as cb:
        for n in range(4):
            await _hook(ca, endpoints.url(f"tarpit/{n}"))
        await _hook(cb, endpoints.url("ok/b"))
        await _complete_tasks(settings, a, 5)  # 20 jobs, each holding a worker 5 s
        await asyncio.sleep(0.5)
        published = await _complete_tasks(settings, b, 5)

        async def all_arrived() -> bool:
            return set(published) <= set(endpoints.received)
        await eventually(all_arrived, timeout_s=10.0)
    latency = {t: endpoints.received[t] - published[t] for t in published}
    print(f"tenant B delivery latency (s): max {max(latency.values()):.3f}, "
          f"tarpit peak concurrency {endpoints.tarpit_peak}")
    # The whole batch of A's jobs times out after 5 s; B must not wait behind it.
    assert max(latency.values()) < 3.0, latency
    assert endpoints.tarpit_peak >= 1  # A's attempts were hanging in the tarpit meanwhile
    assert endpoints.tarpit_peak <= settings.webhook_per_tenant  # A's share, no more


async def test_failing_endpoint_opens_its_circuit_and_a_probe_closes_it(
        nats_server: str, tmp_path: Path, endpoints: Endpoints,
        handlers_factory: Callable[[Settings], Awaitable[None]]) -> None:
    settings = _settings(nats_server, tmp_path, webhook_breaker_failures=2,
                         webhook_breaker_period_s=0.3, webhook_breaker_cooldown_s=3.0,
                         webhook_retry_window_s=30.0)
    await handlers_factory(settings)
    tenant = f"breaker{uuid.uuid4().hex[:6]}"
    async with gateway_client(settings, await issue_key(settings, tenant)) as client:
        hook_id = await _hook(client, endpoints.url("flaky"))

        async def breaker() -> dict[str, Any]:
            resp = await client.get(f"/v1/webhooks/{hook_id}")
            assert resp.status == 200
            return dict((await resp.json())["breaker"])

        assert (await breaker())["state"] == "closed"
        await _complete_tasks(settings, tenant, 3)

        async def opened() -> dict[str, Any] | None:
            state = await breaker()
            return state if state["state"] == "open" else None
        # generous: the session's nats-server holds other modules' backlog on the durables
        state = await eventually(opened, timeout_s=40.0)
        assert state["failures"] >= 2 and state["last_error"] == "HTTP 503"
        assert state["since"] and state["probe_at"] and state["failing_since"]
        listed = await (await client.get("/v1/webhooks")).json()
        assert listed["items"][0]["breaker"]["state"] == "open"

        calls = len(endpoints.flaky_calls)
        await asyncio.sleep(1.0)  # open: nothing is sent (the probe is 3 s after opening)
        assert len(endpoints.flaky_calls) == calls
        endpoints.failing = False

        async def closed() -> bool:
            return (await breaker())["state"] == "closed"
        await eventually(closed, timeout_s=30.0)

        async def delivered() -> bool:
            resp = await client.get(f"/v1/webhooks/{hook_id}/deliveries")
            items = (await resp.json())["items"]
            return len(items) == 3 and all(d["state"] == "succeeded" for d in items)
        await eventually(delivered, timeout_s=40.0)
    final = await breaker_state(settings, tenant, hook_id)
    assert final is not None and final["failures"] == 0


async def breaker_state(settings: Settings, tenant: str, hook_id: str) -> dict[str, Any] | None:
    from gateway.webhooks import open_breakers

    nc, js = await connect(settings, "test-breaker")
    try:
        found = await (await open_breakers(js)).get(f"{tenant}.{hook_id}")
        return found.model_dump(mode="json") if found else None
    finally:
        await nc.close()
