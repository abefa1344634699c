"""Outgoing webhooks end to end: real NATS, the handlers process loop, a local receiver.

Signatures are checked with the ``standardwebhooks`` package; the retry
schedule is shrunk to tenths of a second by settings (24 h in production).
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import generate_latest
from standardwebhooks.webhooks import Webhook

from handlers.app import run as run_handlers
from infra.bus.publish import publish_event
from infra.bus.topology import connect
from infra.kv import WebhookRepo
from infra.security.address_guard import BlockedAddress, resolve_checked
from infra.security.signing import new_secret
from infra.settings import Settings
from infra.telemetry.tracing import new_traceparent
from schemas.events import TaskCompleted, TaskCompletedEvent, TaskRequestedEvent
from schemas.tenancy import SigningSecret
from schemas.webhooks import WebhookSubscription
from tests.support.factories import request
from tests.support.tenancy_utils import apply_streams, gateway_client, issue_key

pytestmark = pytest.mark.integration


@dataclass
class Receiver:
    """A local webhook endpoint: ``/hook/<name>`` fails its first ``fail[name]`` calls."""

    server: TestServer
    fail: dict[str, int] = field(default_factory=dict)
    calls: dict[str, list[tuple[float, dict[str, str], bytes]]] = field(default_factory=dict)

    def url(self, name: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.server.port}/hook/{name}"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    holder: dict[str, Receiver] = {}

    async def hook(request: web.Request) -> web.Response:
        rec, name = holder["r"], request.match_info["name"]
        rec.calls.setdefault(name, []).append(
            (time.monotonic(), dict(request.headers), await request.read()))
        if len(rec.calls[name]) <= rec.fail.get(name, 0):
            return web.Response(status=500, text="not yet")
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook/{name}", hook)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    holder["r"] = Receiver(server=server)
    yield holder["r"]
    await server.close()


def _settings(nats_url: str, tmp_path: Path, allow_private: bool, window_s: float) -> Settings:
    return Settings(nats_url=nats_url, store_dir=tmp_path / "store",
                    webhooks_allow_private=allow_private, webhook_timeout_s=3.0,
                    webhook_retry_base_s=0.2, webhook_retry_max_delay_s=1.0,
                    webhook_retry_window_s=window_s, api_key_cache_s=0)


@pytest.fixture
async def handlers_factory() -> AsyncIterator[Callable[[Settings], Awaitable[None]]]:
    """Start the real handlers loop (enrich, projector, webhooks, deliveries) in-process."""
    running: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    async def start(settings: Settings) -> None:
        await apply_streams(settings)
        stop = asyncio.Event()
        running.append((stop, asyncio.create_task(run_handlers(settings, stop))))

    yield start
    for stop, task in running:
        stop.set()
        await asyncio.wait_for(task, 20)


async def _task_events(settings: Settings, tenant: str) -> tuple[str, str]:
    """Publish task.requested then task.completed for a task of ``tenant``."""
    task_id = f"wh-{uuid.uuid4().hex[:10]}"
    trace = str(new_traceparent())
    nc, js = await connect(settings, "test-publish")
    try:
        await publish_event(js, TaskRequestedEvent(
            source="test", subject=task_id, traceparent=trace,
            data=request(task_id=task_id, tenant=tenant)))
        await publish_event(js, TaskCompletedEvent(
            source="test", subject=task_id, traceparent=trace, data=TaskCompleted(
                task_id=task_id, metrics={"auc": 0.9}, artifacts=[], duration_s=1.0)))
    finally:
        await nc.close()
    return task_id, trace


async def eventually(check: Callable[[], Awaitable[Any]], timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


async def _deliveries(client: TestClient, hook_id: str) -> list[dict[str, Any]]:
    resp = await client.get(f"/v1/webhooks/{hook_id}/deliveries")
    assert resp.status == 200
    return list((await resp.json())["items"])


async def test_signed_delivery_retries_with_backoff_until_success(
        nats_server: str, tmp_path: Path, receiver: Receiver,
        handlers_factory: Callable[[Settings], Awaitable[None]]) -> None:
    settings = _settings(nats_server, tmp_path, allow_private=True, window_s=4.0)
    await handlers_factory(settings)
    tenant = f"hooks{uuid.uuid4().hex[:6]}"
    receiver.fail.update({"flaky": 2, "dead": 10**6})
    async with gateway_client(settings, await issue_key(settings, tenant)) as client:
        hooks = {}
        for name, types in (("flaky", ["task.completed"]), ("other", ["task.failed"]),
                            ("dead", ["task.completed"])):
            resp = await client.post("/v1/webhooks", json={"url": receiver.url(name),
                                                           "event_types": types})
            assert resp.status == 201, await resp.text()
            hooks[name] = await resp.json()
        task_id, trace = await _task_events(settings, tenant)

        async def settled() -> bool:
            states = [d["state"] for name in ("flaky", "dead")
                      for d in await _deliveries(client, hooks[name]["webhook"]["id"])]
            return len(states) == 2 and "pending" not in states
        await eventually(settled)

        calls = receiver.calls["flaky"]
        assert len(calls) == 3
        verifier = Webhook(hooks["flaky"]["secret"])
        for _, headers, body in calls:
            event = verifier.verify(body, headers)
            assert event["type"] == "radtrain.task.completed.v1" and event["subject"] == task_id
            assert headers["traceparent"] == trace
        assert len({h["webhook-id"] for _, h, _ in calls}) == 1  # one delivery, retried
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(calls)]
        assert gaps[0] >= 0.18 and gaps[1] >= 0.38 and gaps[1] > gaps[0]  # 0.2 s, then 0.4 s

        [flaky] = await _deliveries(client, hooks["flaky"]["webhook"]["id"])
        assert flaky["state"] == "succeeded" and flaky["task_id"] == task_id
        assert [a["status_code"] for a in flaky["attempts"]] == [500, 500, 204]
        assert flaky["attempts"][0]["next_retry_at"] and not flaky["attempts"][-1]["next_retry_at"]

        [dead] = await _deliveries(client, hooks["dead"]["webhook"]["id"])
        assert dead["state"] == "failed" and 3 <= len(dead["attempts"]) <= 8
        assert dead["attempts"][-1]["next_retry_at"] is None  # gave up: the window closed
        assert len(receiver.calls["dead"]) == len(dead["attempts"])
        assert await _deliveries(client, hooks["other"]["webhook"]["id"]) == []
        assert "other" not in receiver.calls  # filtered by event type
        for hook in hooks.values():
            await client.delete(f"/v1/webhooks/{hook['webhook']['id']}")
    metrics = generate_latest().decode()  # this process ran the handlers' loops
    for line in ('radtrain_events_handled_total{consumer="webhook-deliveries",outcome="nak",'
                 'type="jobs"}', 'radtrain_webhook_attempts_total{outcome="gave_up"}',
                 'radtrain_consumer_lag{consumer="webhooks"}'):
        assert line in metrics, line


async def test_rotation_signs_with_both_secrets(
        nats_server: str, tmp_path: Path, receiver: Receiver,
        handlers_factory: Callable[[Settings], Awaitable[None]]) -> None:
    settings = _settings(nats_server, tmp_path, allow_private=True, window_s=5)
    await handlers_factory(settings)
    tenant = f"rot{uuid.uuid4().hex[:6]}"
    async with gateway_client(settings, await issue_key(settings, tenant)) as client:
        created = await (await client.post("/v1/webhooks", json={
            "url": receiver.url("rot"), "event_types": ["task.completed"]})).json()
        hook_id = created["webhook"]["id"]
        rotated = await (await client.post(f"/v1/webhooks/{hook_id}/rotate-secret")).json()
        assert rotated["secret"] != created["secret"]
        await _task_events(settings, tenant)
        await eventually(lambda: _async(len(receiver.calls.get("rot", [])) == 1))
        _, headers, body = receiver.calls["rot"][0]
        assert len(headers["webhook-signature"].split()) == 2
        for secret in (created["secret"], rotated["secret"]):
            Webhook(secret).verify(body, headers)
        await client.delete(f"/v1/webhooks/{hook_id}")


async def _async(value: Any) -> Any:
    return value


async def test_private_targets_are_refused_at_every_attempt(
        nats_server: str, tmp_path: Path, receiver: Receiver,
        handlers_factory: Callable[[Settings], Awaitable[None]]) -> None:
    settings = _settings(nats_server, tmp_path, allow_private=False, window_s=0.5)
    await handlers_factory(settings)
    tenant = f"ssrf{uuid.uuid4().hex[:6]}"
    targets = {
        "loopback": receiver.url("a"),
        "private": "http://10.0.0.1/hook",
        "linklocal": "http://169.254.169.254/latest/meta-data",
        "name": receiver.url("b", host="localhost"),  # a name resolving to loopback
    }
    async with gateway_client(settings, await issue_key(settings, tenant)) as client:
        for url in targets.values():  # refused up front by the API ...
            resp = await client.post("/v1/webhooks", json={"url": url})
            assert resp.status == 422, url
            assert (await resp.json())["error"]["details"][0]["field"] == "url"
        nc, js = await connect(settings, "test-subs")
        repo = await WebhookRepo.open(js)
        now = datetime.now(UTC)
        for name, url in targets.items():  # ... and, if stored anyway, at delivery
            await repo.put(WebhookSubscription(
                id=f"wh{name}", tenant=tenant, url=url, event_types=["task.completed"],
                created_at=now, secrets=[SigningSecret(secret=new_secret(), created_at=now)]))
        await nc.close()
        await _task_events(settings, tenant)

        async def all_failed() -> bool:
            items = [await _deliveries(client, f"wh{n}") for n in targets]
            return all(len(i) == 1 and i[0]["state"] == "failed" for i in items)
        await eventually(all_failed)
        for name in targets:
            [delivery] = await _deliveries(client, f"wh{name}")
            for attempt in delivery["attempts"]:
                assert attempt["status_code"] is None
                assert attempt["error"].startswith("blocked_address"), attempt
        assert receiver.calls == {}  # nothing ever reached the loopback receiver
    with pytest.raises(BlockedAddress):
        await resolve_checked("localhost", 80, allow_private=False)
    assert await resolve_checked("localhost", 80, allow_private=True)
