"""Idempotency-Keys whose task ids are derived from the key (gateway/keyed_ids.py), over
a real nats-server: a new key is one JetStream write and no KV record; replays, 409s
and concurrent requests are decided by the stream; epochs and the KV path meet."""

from __future__ import annotations

import asyncio
import gc
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

from gateway import keyed_ids
from gateway.idempotency import IdempotencyRecord, IdempotencyStore, StoredResponse, kv_key
from gateway.keyed_ids import KeyedIds, KeyedRequest, submit_derived
from infra.bus.publish import publish_event, publish_first_event
from infra.bus.topology import connect
from infra.settings import Settings
from schemas.admission import request_digest
from schemas.events import TaskRequestedEvent, encode_event
from schemas.tasks import TaskRequest, TaskRequested
from tests.faults.helpers import subject_counts
from tests.support.tenancy_utils import apply_streams, bearer, gateway_client, issue_key

pytestmark = pytest.mark.integration

BODY: dict[str, Any] = {
    "name": "keyed", "flow": "general", "task_type": "classification", "dataset_id": "ds1",
    "model": {"mode": "manual", "network": "mobilenetv3_small_100", "pretrained": False},
}
SECRET = "ab" * 32


def keyed_settings(nats_server: str, tmp_path: Path, **extra: Any) -> Settings:
    key_file = tmp_path / "seal.key"
    key_file.write_text(SECRET + "\n")
    return Settings(nats_url=nats_server, store_dir=tmp_path / "store",
                    secrets_seal_key=key_file, **extra)


@pytest.fixture
async def env(nats_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
              ) -> AsyncIterator[tuple[Settings, TestClient]]:
    """A gateway in the middle of an epoch (out of the band, whatever the weekday)."""
    monkeypatch.setattr(keyed_ids, "EPOCH_ORIGIN_S", time.time() - keyed_ids.EPOCH_S / 2)
    settings = keyed_settings(nats_server, tmp_path)
    await apply_streams(settings)
    async with gateway_client(settings, await issue_key(settings, "default")) as client:
        yield settings, client


async def requested(settings: Settings, task_id: str) -> int:
    nc, js = await connect(settings, "test-keyed")
    try:
        subject = f"tasks.requested.{task_id}"
        return (await subject_counts(js, subject)).get(subject, 0)
    finally:
        await nc.close()


async def kv_record(settings: Settings, key: str) -> IdempotencyRecord | None:
    nc, js = await connect(settings, "test-keyed")
    try:
        return await (await IdempotencyStore.open(js)).kv.get(kv_key("default", key))
    finally:
        await nc.close()


def ids_of(settings: Settings) -> KeyedIds:
    """The gateway's ids, as ``for_stream`` makes them from this secret and settings."""
    made = KeyedIds.for_stream(settings, bytes.fromhex(SECRET),
                               StreamConfig(name="TASKS", max_age=0.0))
    assert made is not None
    return made


async def post(client: TestClient, key: str, body: dict[str, Any] = BODY,
               headers: dict[str, str] | None = None) -> tuple[int, str | None, bool]:
    resp = await client.post("/v1/tasks", json=body,
                             headers={"Idempotency-Key": key, **(headers or {})})
    doc = await resp.json()
    return resp.status, doc.get("task_id"), resp.headers.get("Idempotent-Replayed") == "true"


async def test_a_new_key_is_one_write_named_by_its_derived_id(
        env: tuple[Settings, TestClient]) -> None:
    settings, client = env
    key = f"k-{uuid.uuid4().hex}"
    status, task_id, replayed = await post(client, key)
    ids = ids_of(settings)
    assert (status, replayed) == (202, False)
    assert task_id == ids.task_id("default", key, ids.epoch(time.time()))
    assert await kv_record(settings, key) is None  # the stream's event is the claim
    assert await post(client, key) == (202, task_id, True)
    status, _, _ = await post(client, key, {**BODY, "dataset_id": "ds2"})
    assert status == 409
    other = await post(client, key, headers=bearer(await issue_key(settings, "other")))
    assert other[0] == 202 and other[1] != task_id and not other[2]
    assert await requested(settings, task_id) == 1  # type: ignore[arg-type]
    assert gc.get_freeze_count() == 0  # only a service's entry point freezes its heap


async def test_concurrent_requests_of_a_new_key_make_one_task(
        env: tuple[Settings, TestClient]) -> None:
    settings, client = env
    key = f"burst-{uuid.uuid4().hex}"
    answers = await asyncio.gather(*(post(client, key) for _ in range(16)))
    assert {a[0] for a in answers} == {202} and len({a[1] for a in answers}) == 1
    assert [a[2] for a in answers].count(False) == 1  # one published, the others replayed
    assert await requested(settings, answers[0][1]) == 1  # type: ignore[arg-type]


async def test_the_stream_refuses_a_second_request_of_an_id_whatever_its_msg_id(
        env: tuple[Settings, TestClient]) -> None:
    """The stream already holds the key's id under another msg id (outside the duplicate
    window's reach): only ``Nats-Expected-Last-Subject-Sequence`` stops a second one."""
    settings, client = env
    key = f"held-{uuid.uuid4().hex}"
    ids = ids_of(settings)
    task_id = ids.task_id("default", key, ids.epoch(time.time()))
    nc, js = await connect(settings, "test-keyed")
    try:
        await js.publish(f"tasks.requested.{task_id}", encode_event(event(task_id, key)),
                         headers={"Nats-Msg-Id": f"{task_id}:requested:elsewhere"})
    finally:
        await nc.close()
    status, _, _ = await post(client, key, {**BODY, "dataset_id": "ds2"})
    assert status == 409
    assert await post(client, key) == (202, task_id, True)
    assert await requested(settings, task_id) == 1


def event(task_id: str, key: str, tenant: str = "default") -> TaskRequestedEvent:
    return TaskRequestedEvent(source="test", subject=task_id, data=TaskRequested(
        **TaskRequest.model_validate(BODY).model_dump(), task_id=task_id, tenant=tenant,
        idempotency_key=key))


async def sleep_until(at: float) -> None:
    await asyncio.sleep(max(0.0, at - time.time()))


async def test_epochs_a_spent_id_and_the_kv_path(nats_server: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """An epoch starts 12 s into the test; a window of 6 s, a band from 2 s before it.
    Key 1: a task; a second one once the first's window is over (a drawn id, in KV),
    answered again across the boundary (through KV), then a third in the new epoch once
    the second's window is over. Key 2: a task in the band before the boundary (claimed
    in KV). Key 3: a task before the band (no KV record). Both answered again after the
    boundary: last epoch's ids are read first."""
    start = time.time()
    t0 = start + 12.0
    monkeypatch.setattr(keyed_ids, "EPOCH_ORIGIN_S", t0)
    monkeypatch.setattr(keyed_ids, "EPOCH_S", 60.0)
    monkeypatch.setattr(keyed_ids, "BAND_S", 2.0)
    settings = keyed_settings(nats_server, tmp_path, idempotency_ttl_s=6)
    await apply_streams(settings)
    ids = ids_of(settings)
    assert (ids.epoch(start), ids.epoch(t0)) == (-1, 0)
    k1, k2, k3 = (f"e{i}-{uuid.uuid4().hex}" for i in (1, 2, 3))
    async with gateway_client(settings, await issue_key(settings, "default")) as client:
        _, first, _ = await post(client, k1)
        assert first == ids.task_id("default", k1, -1)
        await sleep_until(start + 7.5)  # first's window is over: a new task, a drawn id
        status, drawn, replayed = await post(client, k1)
        assert status == 202 and drawn not in (None, first) and not replayed
        assert await post(client, k1) == (202, drawn, True)
        await sleep_until(start + 8.5)  # before the band
        assert await post(client, k3) == (202, ids.task_id("default", k3, -1), False)
        assert await kv_record(settings, k3) is None
        await sleep_until(start + 10.5)  # the band, before the boundary
        status, late, replayed = await post(client, k2)
        assert (status, late, replayed) == (202, ids.task_id("default", k2, -1), False)
        record = await kv_record(settings, k2)
        assert record is not None and record.task_id == late  # claimed across the boundary
        await sleep_until(t0 + 0.5)  # the next epoch, within its first window
        assert await post(client, k1) == (202, drawn, True)  # found through KV
        assert await post(client, k2) == (202, late, True)
        assert await post(client, k3) == (202, ids.task_id("default", k3, -1), True)
        await sleep_until(t0 + 8.3)  # the first window (6 s + the band's 2) is over
        status, third, replayed = await post(client, k1)
        assert (status, third, replayed) == (202, ids.task_id("default", k1, 0), False)
    for task_id in (first, drawn, late, third, ids.task_id("default", k3, -1)):
        assert await requested(settings, task_id) == 1  # type: ignore[arg-type]


def direct_request(js: JetStreamContext, key: str, body: dict[str, Any]) -> KeyedRequest:
    """What gateway/tasks.py builds, minus admission (one tenant here)."""

    def event_for(task_id: str) -> TaskRequestedEvent:
        return TaskRequestedEvent(source="test", subject=task_id, data=TaskRequested(
            **TaskRequest.model_validate(body).model_dump(), task_id=task_id,
            tenant="default", idempotency_key=key))

    async def publish(task_id: str, won: bool) -> None:
        await publish_event(js, event_for(task_id))  # the msg id dedups a replay's

    async def publish_first(task_id: str) -> bool:
        return await publish_first_event(js, event_for(task_id))

    return KeyedRequest("default", key, request_digest(TaskRequest.model_validate(body)),
                        publish_first=publish_first, publish=publish,
                        answer=lambda t: StoredResponse(status=202, body={"task_id": t}),
                        draw_id=lambda: uuid.uuid4().hex)


async def test_two_requests_of_a_new_key_on_either_side_of_a_boundary_make_one_task(
        nats_server: str, tmp_path: Path) -> None:
    """Decided at 1 ms before and 1 ms after an epoch's start, side by side: each would
    publish its own epoch's id; in the band ``kv.create`` picks one."""
    settings = keyed_settings(nats_server, tmp_path)
    await apply_streams(settings)
    boundary = time.time()
    ids = KeyedIds(bytes(32), ttl_s=60.0, epoch_s=3600.0, origin_s=boundary, band_s=5.0)
    nc, js = await connect(settings, "test-keyed")
    try:
        store = await IdempotencyStore.open(js)
        for attempt in range(3):  # a key per attempt: both orders of arrival are covered
            key = f"straddle-{attempt}-{uuid.uuid4().hex}"
            req = direct_request(js, key, BODY)
            answers = await asyncio.gather(*(
                submit_derived(ids, js, store, req, now=boundary + delta)
                for delta in ((-0.001, 0.001) if attempt % 2 else (0.001, -0.001))))
            task_ids = {json.loads(a.body)["task_id"] for a in answers}  # type: ignore[arg-type]
            assert len(task_ids) == 1, task_ids
            assert task_ids <= {ids.task_id("default", key, e) for e in (-1, 0)}
            assert await requested(settings, task_ids.pop()) == 1
    finally:
        await nc.close()
