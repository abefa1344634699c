"""API keys, tenant isolation on every route, limits, metrics and trace context,
against a real nats-server (no handlers: records are written as the projector would)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from click.testing import Result
from typer.testing import CliRunner

from gateway.auth import PUBLIC_PATHS
from gateway.console import PUBLIC as CONSOLE_PUBLIC
from infra.bus.topology import TASKS_STREAM, connect
from infra.kv import DatasetRepo, TaskRepo
from infra.settings import Settings
from infra.store import open_store
from infra.telemetry.tracing import new_traceparent, parse_traceparent
from schemas.events import Artifact, parse_event
from schemas.record import TaskRecord
from tests.support.factories import dataset
from tests.support.tenancy_utils import apply_streams, bearer, gateway_client, issue_key

pytestmark = pytest.mark.integration

TASK: dict[str, Any] = {
    "name": "iso", "flow": "general", "task_type": "classification", "dataset_id": "ds1",
    "model": {"mode": "manual", "network": "mobilenetv3_small_100", "pretrained": False},
}


@pytest.fixture
async def env(nats_server: str, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    settings = Settings(nats_url=nats_server, store_dir=tmp_path, rate_limit_per_s=1000,
                        rate_limit_burst=1000, api_key_cache_s=0, unauth_rate_per_s=1000,
                        unauth_burst=1000)  # the route sweep sends ~100 keyless requests
    await apply_streams(settings)
    keys = {t: await issue_key(settings, t) for t in ("tenanta", "tenantb")}
    async with gateway_client(settings) as client:
        yield {"settings": settings, "client": client, "keys": keys}


async def _seed_task(settings: Settings, tenant: str) -> str:
    """A completed task of ``tenant`` with one artifact in the store."""
    task_id = f"task-{tenant}-{datetime.now(UTC).timestamp():.0f}"
    store = open_store(settings)
    info = store.put_bytes(f"runs/{task_id}/metrics.json", b'{"auc": 1}', "application/json")
    now = datetime.now(UTC)
    rec = TaskRecord(task_id=task_id, tenant=tenant, name="seeded", state="completed",
                     flow="general", dataset_id="ds1", created_at=now, updated_at=now,
                     artifacts=[Artifact(name="metrics.json", key=info.key, uri=store.uri(info.key),
                                         sha256=info.sha256, size=info.size)])
    nc, js = await connect(settings, "seed")
    try:
        await (await TaskRepo.open(js)).upsert(task_id, lambda _: rec)
        await (await DatasetRepo.open(js)).put(dataset(id=f"ds-{tenant}", tenant=tenant))
    finally:
        await nc.close()
    return task_id


async def test_every_non_public_route_needs_a_valid_key(env: dict[str, Any]) -> None:
    client: TestClient = env["client"]
    routes = {(r.method, r.resource.canonical) for r in client.app.router.routes()
              if r.method != "HEAD" and r.resource is not None}
    assert len(routes) >= 12
    for method, path in sorted(routes):
        url = re.sub(r"\{[^}]+\}", "x1", path)
        if path in PUBLIC_PATHS:
            assert (await client.request(method, url)).status in (200, 503), path
            continue
        if path in CONSOLE_PUBLIC:  # the console's files: no tenant data (x1 is no file)
            assert (await client.request(method, url)).status in (200, 404), path
            continue
        for headers in ({}, bearer("rt_0123456789abcdef_" + "A" * 43), {"Authorization": "x"}):
            resp = await client.request(method, url, headers=headers)
            assert resp.status == 401, (method, path, headers)
            assert (await resp.json())["error"]["code"] == "unauthorized"
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")


async def test_tenant_a_gets_404_for_tenant_b_objects(env: dict[str, Any]) -> None:
    client, keys, settings = env["client"], env["keys"], env["settings"]
    a, b = bearer(keys["tenanta"]), bearer(keys["tenantb"])
    task_b = await _seed_task(settings, "tenantb")
    hook = await client.post("/v1/webhooks", json={"url": "https://hooks.example.com/b"},
                             headers=b)
    assert hook.status == 201
    hook_b = (await hook.json())["webhook"]["id"]
    own = [f"/v1/tasks/{task_b}", f"/v1/tasks/{task_b}/artifacts/metrics.json",
           f"/v1/webhooks/{hook_b}", f"/v1/webhooks/{hook_b}/deliveries"]
    paths = {r.resource.canonical for r in client.app.router.routes() if r.resource}
    if "/v1/datasets/{dataset_id}" in paths:  # routes of gateway/datasets.py, when present
        own.append("/v1/datasets/ds-tenantb")
    for url in own:
        assert (await client.get(url, headers=b)).status == 200, url
        resp = await client.get(url, headers=a)
        assert resp.status == 404, url
        assert (await resp.json())["error"]["code"] == "not_found"
    assert (await client.post(f"/v1/webhooks/{hook_b}/rotate-secret", headers=a)).status == 404
    assert (await client.delete(f"/v1/webhooks/{hook_b}", headers=a)).status == 404
    listed = await (await client.get("/v1/tasks?limit=500", headers=a)).json()
    assert task_b not in {t["task_id"] for t in listed["items"]}
    assert (await (await client.get("/v1/webhooks", headers=a)).json())["total"] == 0
    assert (await client.get(f"/v1/webhooks/{hook_b}", headers=b)).status == 200
    artifact = await client.get(f"/v1/tasks/{task_b}/artifacts/metrics.json", headers=b)
    assert await artifact.read() == b'{"auc": 1}'


async def test_submitted_task_belongs_to_the_callers_tenant(env: dict[str, Any]) -> None:
    client, keys = env["client"], env["keys"]
    resp = await client.post("/v1/tasks", json=TASK, headers=bearer(keys["tenanta"]))
    assert resp.status == 202
    location = resp.headers["Location"]
    assert (await client.get(location, headers=bearer(keys["tenanta"]))).status == 200
    assert (await client.get(location, headers=bearer(keys["tenantb"]))).status == 404


async def test_revoked_key_is_refused_and_cli_manages_keys(env: dict[str, Any]) -> None:
    from radtrain.cli.main import app

    settings, client = env["settings"], env["client"]
    runner = CliRunner(env={"RADTRAIN_NATS_URL": settings.nats_url})

    async def cli(*args: str) -> Result:  # the CLI runs its own event loop: not on ours
        return await asyncio.to_thread(runner.invoke, app, list(args))

    created = await cli("keys", "create", "--tenant", "clitenant", "--name", "ci")
    assert created.exit_code == 0, created.output
    key = created.output.strip().splitlines()[-1]
    assert (await client.get("/v1/tasks", headers=bearer(key))).status == 200
    listed = await cli("keys", "list", "--tenant", "clitenant")
    key_id = key.split("_")[1]
    assert key_id in listed.output and key not in listed.output
    assert (await cli("keys", "revoke", key_id)).exit_code == 0
    assert (await client.get("/v1/tasks", headers=bearer(key))).status == 401
    assert (await cli("keys", "revoke", "0" * 16)).exit_code == 3  # not found (issue 17)
    as_json = json.loads((await cli("keys", "list", "--tenant", "clitenant", "--json")).stdout)
    assert key_id in {k["id"] for k in as_json}


async def test_rate_limit_answers_429_with_retry_after(nats_server: str, tmp_path: Path) -> None:
    settings = Settings(nats_url=nats_server, store_dir=tmp_path, rate_limit_per_s=0.5,
                        rate_limit_burst=3)
    key = await issue_key(settings, "limited")
    async with gateway_client(settings, key) as client:
        statuses = [(await client.get("/v1/tasks")).status for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        resp = await client.get("/v1/tasks")
        assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
        assert (await resp.json())["error"]["code"] == "rate_limited"
        other = await issue_key(settings, "limited")
        assert (await client.get("/v1/tasks", headers=bearer(other))).status == 200
        assert (await client.get("/healthz")).status == 200  # probes are not limited


async def test_json_only_and_size_limit(env: dict[str, Any]) -> None:
    client, a = env["client"], bearer(env["keys"]["tenanta"])
    resp = await client.post("/v1/tasks", data=b"name=x", headers={
        **a, "Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 415 and (await resp.json())["error"]["code"] == "unsupported_media_type"
    resp = await client.post("/v1/webhooks", data=b"{}",
                             headers={**a, "Content-Type": "text/plain"})
    assert resp.status == 415
    big = {**TASK, "description": "x" * 2_000_000}
    resp = await client.post("/v1/tasks", json=big, headers=a)
    assert resp.status == 413


async def test_traceparent_reaches_the_event_and_metrics_count(env: dict[str, Any]) -> None:
    client, settings = env["client"], env["settings"]
    incoming = new_traceparent()
    resp = await client.post("/v1/tasks", json=TASK, headers={
        **bearer(env["keys"]["tenanta"]), "traceparent": str(incoming)})
    task_id = (await resp.json())["task_id"]
    answered = parse_traceparent(resp.headers["traceparent"])
    assert answered is not None and answered.trace_id == incoming.trace_id
    nc, js = await connect(settings, "trace-check")
    try:
        raw = await js.get_last_msg(TASKS_STREAM, f"tasks.requested.{task_id}")
    finally:
        await nc.close()
    event = parse_event(raw.data or b"")
    assert event.traceparent == str(answered)
    metrics = await (await client.get("/metrics")).text()
    assert re.search(r'radtrain_http_requests_total\{method="POST",route="/v1/tasks",'
                     r'status="202"\} [1-9]', metrics), metrics[:2000]
    assert "radtrain_http_request_duration_seconds_bucket" in metrics


def test_keys_commands_without_nats_exit_unavailable_with_one_line() -> None:
    """Managing keys talks to NATS directly: NATS down is exit 4 (retry), not a
    traceback or a command that waits for ever."""
    import socket

    from radtrain.cli.main import app

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"nats://127.0.0.1:{sock.getsockname()[1]}"
    result = CliRunner(env={"RADTRAIN_NATS_URL": dead}).invoke(app, ["keys", "list"])
    assert result.exit_code == 4, result.output
    assert "NATS unreachable" in result.stderr and "Traceback" not in result.output
