"""``POST /v1/events``: signed task.requested CloudEvents from upstream systems.

Signed with the ``standardwebhooks`` package, as an upstream system would;
every refusal is a 401 (or 403/422) with nothing published on the stream.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from nats.js.errors import NotFoundError
from standardwebhooks.webhooks import Webhook

from infra.bus.topology import TASKS_STREAM, connect
from infra.settings import Settings
from infra.telemetry.tracing import parse_traceparent
from schemas.events import TaskRequestedEvent, encode_event, parse_event
from tests.faults.helpers import subject_counts
from tests.support.factories import request
from tests.support.tenancy_utils import (
    apply_streams,
    bearer,
    gateway_client,
    inbound_secret,
    issue_key,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def env(nats_server: str, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    settings = Settings(nats_url=nats_server, store_dir=tmp_path, api_key_cache_s=0)
    await apply_streams(settings)
    tenant = f"up{uuid.uuid4().hex[:6]}"
    key = await issue_key(settings, tenant)
    async with gateway_client(settings, key) as client:
        yield {"settings": settings, "client": client, "tenant": tenant,
               "secret": await inbound_secret(settings, tenant)}


def _event(tenant: str, **over: Any) -> tuple[str, bytes]:
    task_id = f"up-{uuid.uuid4().hex[:10]}"
    event = TaskRequestedEvent(source="pacs-bridge", subject=task_id,
                               data=request(task_id=task_id, tenant=tenant), **over)
    return task_id, encode_event(event)


def _signed(secret: str, body: bytes, msg_id: str | None = None,
            at: float | None = None) -> dict[str, str]:
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    stamp = datetime.fromtimestamp(int(at if at is not None else time.time()), UTC)
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(stamp.timestamp())),
            "webhook-signature": Webhook(secret).sign(msg_id, stamp, body.decode()),
            "Content-Type": "application/cloudevents+json"}


async def _published(settings: Settings, task_id: str) -> TaskRequestedEvent | None:
    nc, js = await connect(settings, "inbound-check")
    try:
        raw = await js.get_last_msg(TASKS_STREAM, f"tasks.requested.{task_id}")
    except NotFoundError:
        return None
    finally:
        await nc.close()
    event = parse_event(raw.data or b"")
    assert isinstance(event, TaskRequestedEvent)
    return event


async def _refused(client: TestClient, body: bytes, headers: dict[str, str], status: int = 401
                   ) -> str:
    resp = await client.post("/v1/events", data=body, headers=headers)
    assert resp.status == status, await resp.text()
    return str((await resp.json())["error"]["message"])


async def test_signed_event_is_published_with_a_trace(env: dict[str, Any]) -> None:
    client, settings = env["client"], env["settings"]
    task_id, body = _event(env["tenant"])
    resp = await client.post("/v1/events", data=body, headers=_signed(env["secret"], body))
    assert resp.status == 202, await resp.text()
    assert resp.headers["Location"] == f"/v1/tasks/{task_id}"
    event = await _published(settings, task_id)
    assert event is not None and event.data.tenant == env["tenant"]
    assert parse_traceparent(event.traceparent) is not None
    assert (await client.get(f"/v1/tasks/{task_id}")).status == 200


async def test_bad_signature_stale_timestamp_and_replay_are_401(env: dict[str, Any]) -> None:
    client, settings, secret = env["client"], env["settings"], env["secret"]
    task_id, body = _event(env["tenant"])
    assert "signature" in await _refused(client, body, _signed("whsec_" + "A" * 43, body))
    tampered = body.replace(b"ICH v1", b"ICH v2")
    assert "signature" in await _refused(client, tampered, _signed(secret, body))
    stale = _signed(secret, body, at=time.time() - 301)
    assert "outside" in await _refused(client, body, stale)
    future = _signed(secret, body, at=time.time() + 301)
    assert "outside" in await _refused(client, body, future)
    no_headers = {"Content-Type": "application/json"}
    assert "missing" in await _refused(client, body, no_headers)
    assert await _published(settings, task_id) is None

    headers = _signed(secret, body)
    assert (await client.post("/v1/events", data=body, headers=headers)).status == 202
    other_id, other_body = _event(env["tenant"])
    replayed = {**_signed(secret, other_body, msg_id=headers["webhook-id"])}
    assert "replay" in await _refused(client, other_body, replayed)
    assert await _published(settings, other_id) is None


async def test_wrong_tenant_shape_and_media_type(env: dict[str, Any]) -> None:
    client, settings, secret = env["client"], env["settings"], env["secret"]
    task_id, body = _event("someoneelse")
    await _refused(client, body, _signed(secret, body), 403)
    await _refused(client, b'{"specversion": "1.0"}',
                   _signed(secret, b'{"specversion": "1.0"}'), 422)
    headers = {**_signed(secret, body), "Content-Type": "text/plain"}
    await _refused(client, body, headers, 415)
    assert await _published(settings, task_id) is None


async def test_rotation_keeps_the_previous_secret_valid(env: dict[str, Any]) -> None:
    client, settings, tenant, old = env["client"], env["settings"], env["tenant"], env["secret"]
    new = await inbound_secret(settings, tenant, overlap_s=3600)
    for secret in (old, new):
        _, body = _event(tenant)
        assert (await client.post("/v1/events", data=body,
                                  headers=_signed(secret, body))).status == 202
    newest = await inbound_secret(settings, tenant, overlap_s=0)  # drop the others at once
    _, body = _event(tenant)
    await _refused(client, body, _signed(new, body))
    assert (await client.post("/v1/events", data=body,
                              headers=_signed(newest, body))).status == 202


async def test_tenant_without_secret_cannot_post_events(nats_server: str, tmp_path: Path) -> None:
    settings = Settings(nats_url=nats_server, store_dir=tmp_path)
    tenant = f"nosecret{uuid.uuid4().hex[:6]}"
    async with gateway_client(settings, await issue_key(settings, tenant)) as client:
        _, body = _event(tenant)
        message = await _refused(client, body, _signed("whsec_" + "B" * 43, body))
        assert "no inbound event secret" in message


# --- admission: one owner per task id --------------------------------------------------


async def _requested_count(settings: Settings, task_id: str) -> int:
    nc, js = await connect(settings, "inbound-check")
    try:
        counts = await subject_counts(js, f"tasks.requested.{task_id}")
    finally:
        await nc.close()
    return counts.get(f"tasks.requested.{task_id}", 0)


async def test_another_tenants_task_id_is_refused_without_saying_whose(
        env: dict[str, Any]) -> None:
    client, settings, tenant = env["client"], env["settings"], env["tenant"]
    task_id, body = _event(tenant)
    assert (await client.post("/v1/events", data=body,
                              headers=_signed(env["secret"], body))).status == 202
    thief = f"th{uuid.uuid4().hex[:6]}"
    thief_secret = await inbound_secret(settings, thief)
    theirs = encode_event(TaskRequestedEvent(
        source="elsewhere", subject=task_id,
        data=request(task_id=task_id, tenant=thief, name="stolen")))
    resp = await client.post("/v1/events", data=theirs, headers={
        **_signed(thief_secret, theirs), **bearer(await issue_key(settings, thief))})
    assert resp.status == 409, await resp.text()
    error = (await resp.json())["error"]
    assert error["code"] == "task_id_unavailable"
    assert tenant not in await resp.text() and "exist" not in error["message"]
    assert await _requested_count(settings, task_id) == 1
    published = await _published(settings, task_id)
    assert published is not None and published.data.tenant == tenant
    assert published.data.name == "ICH v1"


async def test_the_same_request_again_is_one_task_and_another_body_is_409(
        env: dict[str, Any]) -> None:
    client, settings, secret = env["client"], env["settings"], env["secret"]
    task_id, body = _event(env["tenant"])
    for _ in range(2):  # an upstream retry: a new webhook-id, the same event
        resp = await client.post("/v1/events", data=body, headers=_signed(secret, body))
        assert resp.status == 202 and (await resp.json())["task_id"] == task_id
    changed = encode_event(TaskRequestedEvent(source="pacs-bridge", subject=task_id, data=request(
        task_id=task_id, tenant=env["tenant"], dataset_id="other")))
    resp = await client.post("/v1/events", data=changed, headers=_signed(secret, changed))
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "task_id_conflict"
    assert task_id in (await resp.json())["error"]["message"]
    assert await _requested_count(settings, task_id) == 1


async def test_tenant_is_taken_from_the_key_when_data_has_none(env: dict[str, Any]) -> None:
    client, settings = env["client"], env["settings"]
    task_id = f"up-{uuid.uuid4().hex[:10]}"
    doc = json.loads(encode_event(TaskRequestedEvent(
        source="pacs-bridge", subject=task_id, data=request(task_id=task_id))))
    del doc["data"]["tenant"]
    body = json.dumps(doc).encode()
    resp = await client.post("/v1/events", data=body, headers=_signed(env["secret"], body))
    assert resp.status == 202, await resp.text()
    event = await _published(settings, task_id)
    assert event is not None and event.data.tenant == env["tenant"]
