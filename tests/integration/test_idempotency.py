"""Idempotent submission over a real nats-server: same key → same task and answer, within
the retention window; after it, a new task."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.idempotency import IdempotencyStore
from gateway.tasks import new_task_id
from infra.admission import AdmissionRepo, admit
from infra.bus.publish import publish_event
from infra.bus.topology import connect
from infra.settings import Settings
from schemas.admission import request_digest
from schemas.events import TaskRequestedEvent
from schemas.tasks import TaskRequest, TaskRequested
from tests.faults.helpers import subject_counts
from tests.support.tenancy_utils import apply_streams, bearer, gateway_client, issue_key

pytestmark = pytest.mark.integration

BODY: dict[str, Any] = {
    "name": "idem", "flow": "general", "task_type": "classification", "dataset_id": "ds1",
    "model": {"mode": "manual", "network": "mobilenetv3_small_100", "pretrained": False},
}


@pytest.fixture
async def env(nats_server: str, tmp_path: Path) -> AsyncIterator[tuple[Settings, TestClient]]:
    settings = Settings(nats_url=nats_server, store_dir=tmp_path)
    await apply_streams(settings)
    async with gateway_client(settings, await issue_key(settings, "default")) as client:
        yield settings, client


async def _requested(settings: Settings, task_id: str) -> int:
    nc, js = await connect(settings, "test-idem")
    try:
        return (await subject_counts(js, f"tasks.requested.{task_id}")).get(
            f"tasks.requested.{task_id}", 0)
    finally:
        await nc.close()


async def test_repeat_returns_the_stored_answer_and_a_new_body_is_409(
        env: tuple[Settings, TestClient]) -> None:
    settings, client = env
    key = {"Idempotency-Key": f"k-{uuid.uuid4().hex}"}
    first = await client.post("/v1/tasks", json=BODY, headers=key)
    assert first.status == 202 and "Idempotent-Replayed" not in first.headers
    # Same request spelled differently (key order, spacing): still the same request.
    respelled = json.dumps(dict(reversed(list(BODY.items()))), indent=3)
    again = await client.post("/v1/tasks", data=respelled,
                              headers={**key, "Content-Type": "application/json"})
    assert again.status == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert await again.json() == await first.json()
    assert again.headers["Location"] == first.headers["Location"]
    other = await client.post("/v1/tasks", json={**BODY, "dataset_id": "ds2"}, headers=key)
    assert other.status == 409
    err = (await other.json())["error"]
    assert err["code"] == "idempotency_key_reused" and key["Idempotency-Key"] in err["message"]
    assert await _requested(settings, (await first.json())["task_id"]) == 1


async def test_keys_are_per_tenant_and_bounded(env: tuple[Settings, TestClient]) -> None:
    settings, client = env
    key = {"Idempotency-Key": "shared-key"}
    mine = await (await client.post("/v1/tasks", json=BODY, headers=key)).json()
    other_key = await issue_key(settings, "other")
    theirs = await client.post("/v1/tasks", json=BODY, headers={**key, **bearer(other_key)})
    assert theirs.status == 202 and "Idempotent-Replayed" not in theirs.headers
    assert (await theirs.json())["task_id"] != mine["task_id"]
    long = await client.post("/v1/tasks", json=BODY, headers={"Idempotency-Key": "x" * 256})
    assert long.status == 400


async def test_a_claim_left_by_a_dead_gateway_is_finished_exactly_once(
        env: tuple[Settings, TestClient]) -> None:
    """Claimed but never published → the retry publishes; published but never answered →
    the retry answers without publishing again (the duplicate window may have passed)."""
    settings, client = env
    digest = request_digest(TaskRequest.model_validate(BODY))
    ids = {f"dead-{uuid.uuid4().hex}": new_task_id() for _ in range(2)}
    (unpublished, left), (published, task_id) = ids.items()
    nc, js = await connect(settings, "test-idem")
    try:
        store = await IdempotencyStore.open(js)
        for k, claimed in ids.items():
            await store.claim("default", k, claimed, digest)
        await publish_event(js, TaskRequestedEvent(
            source="test", subject=task_id, data=TaskRequested(
                **TaskRequest.model_validate(BODY).model_dump(), task_id=task_id,
                tenant="default", idempotency_key=published)))
    finally:
        await nc.close()
    for k, claimed in ids.items():
        resp = await client.post("/v1/tasks", json=BODY, headers={"Idempotency-Key": k})
        assert resp.status == 202 and resp.headers["Idempotent-Replayed"] == "true"
        assert (await resp.json())["task_id"] == claimed
        assert await _requested(settings, claimed) == 1
    stored = await client.post("/v1/tasks", json=BODY, headers={"Idempotency-Key": unpublished})
    assert stored.headers["Idempotent-Replayed"] == "true"
    assert (await stored.json())["task_id"] == left


async def test_a_key_reused_after_its_window_creates_a_new_task(
        nats_server: str, tmp_path: Path) -> None:
    """The bucket was created with a 24 h TTL; a shortened window still holds."""
    settings = Settings(nats_url=nats_server, store_dir=tmp_path, idempotency_ttl_s=1)
    await apply_streams(settings)
    key = {"Idempotency-Key": f"window-{uuid.uuid4().hex}"}
    async with gateway_client(settings, await issue_key(settings, "default")) as client:
        first = await client.post("/v1/tasks", json=BODY, headers=key)
        replayed = await client.post("/v1/tasks", json=BODY, headers=key)
        assert replayed.headers["Idempotent-Replayed"] == "true"
        assert (await replayed.json()) == (await first.json())
        await asyncio.sleep(1.2)
        later = await client.post("/v1/tasks", json=BODY, headers=key)
        assert later.status == 202 and "Idempotent-Replayed" not in later.headers
        old_id, new_id = (await first.json())["task_id"], (await later.json())["task_id"]
        assert new_id != old_id and later.headers["Location"] == f"/v1/tasks/{new_id}"
        for task_id in (old_id, new_id):
            assert await _requested(settings, task_id) == 1
            assert (await client.get(f"/v1/tasks/{task_id}")).status == 200
        # Within the new window the key names the new task.
        again = await client.post("/v1/tasks", json=BODY, headers=key)
        assert (await again.json())["task_id"] == new_id
    nc, js = await connect(settings, "test-idem")
    try:  # another tenant naming either id meets its owner
        admissions = await AdmissionRepo.open(js)
        for task_id in (old_id, new_id):
            foreign = TaskRequestedEvent(source="test", subject=task_id, data=TaskRequested(
                **TaskRequest.model_validate(BODY).model_dump(), task_id=task_id,
                tenant="intruder"))
            assert (await admit(admissions, js, foreign, "events")).outcome == "unavailable"
        owners = [await admissions.get(t) for t in (old_id, new_id)]
        assert [o.tenant if o else None for o in owners] == ["default", "default"]
    finally:
        await nc.close()
