"""Idempotency-Keys whose task ids are derived from the key (gateway/keyed_ids.py), over
a real nats-server: a new key is one JetStream write and no KV record; replays, 409s
and concurrent requests are decided by the stream; epochs and the KV path meet."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway import keyed_ids
from gateway.idempotency import IdempotencyStore
from gateway.keyed_ids import KeyedIds
from infra.bus.topology import connect
from infra.settings import Settings
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
async def env(nats_server: str, tmp_path: Path) -> AsyncIterator[tuple[Settings, TestClient]]:
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


async def kv_record(settings: Settings, key: str) -> object:
    nc, js = await connect(settings, "test-keyed")
    try:
        return await (await IdempotencyStore.open(js)).recorded("default", key, None)
    finally:
        await nc.close()


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
    ids = KeyedIds(bytes.fromhex(SECRET), settings.idempotency_ttl_s, keyed_ids.EPOCH_S)
    assert (status, replayed) == (202, False)
    assert task_id == ids.task_id("default", key, ids.epoch(time.time()))
    assert await kv_record(settings, key) is None  # the stream's event is the claim
    assert await post(client, key) == (202, task_id, True)
    status, _, _ = await post(client, key, {**BODY, "dataset_id": "ds2"})
    assert status == 409
    other = await post(client, key, headers=bearer(await issue_key(settings, "other")))
    assert other[0] == 202 and other[1] != task_id and not other[2]
    assert await requested(settings, task_id) == 1  # type: ignore[arg-type]


async def test_concurrent_requests_of_a_new_key_make_one_task(
        env: tuple[Settings, TestClient]) -> None:
    settings, client = env
    key = f"burst-{uuid.uuid4().hex}"
    answers = await asyncio.gather(*(post(client, key) for _ in range(16)))
    assert {a[0] for a in answers} == {202} and len({a[1] for a in answers}) == 1
    assert [a[2] for a in answers].count(False) == 1  # one published, the others replayed
    assert await requested(settings, answers[0][1]) == 1  # type: ignore[arg-type]


async def sleep_until(at: float) -> None:
    await asyncio.sleep(max(0.0, at - time.time()))


async def test_epochs_a_spent_id_and_the_kv_path(nats_server: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Epochs of 6 s, a window of 3 s (the stream keeps 30 days). Key 1: a new task, a
    second after its window (a drawn id, in KV), that one again across the epoch
    boundary, then a third in the next epoch once the drawn one's window is over. Key 2:
    used late in an epoch, replayed early in the next (last epoch's id is read first)."""
    monkeypatch.setattr(keyed_ids, "EPOCH_S", 6.0)
    settings = keyed_settings(nats_server, tmp_path, idempotency_ttl_s=3)
    await apply_streams(settings)
    ids = KeyedIds(bytes.fromhex(SECRET), 3.0, 6.0)
    k1, k2 = f"e1-{uuid.uuid4().hex}", f"e2-{uuid.uuid4().hex}"
    async with gateway_client(settings, await issue_key(settings, "default")) as client:
        t0 = (ids.epoch(time.time()) + 1) * 6.0
        await sleep_until(t0 + 0.05)
        _, first, _ = await post(client, k1)
        assert first == ids.task_id("default", k1, ids.epoch(t0))
        await sleep_until(t0 + 4.0)  # first's window is over: a new task, a drawn id
        status, drawn, replayed = await post(client, k1)
        assert status == 202 and drawn not in (None, first) and not replayed
        assert await post(client, k1) == (202, drawn, True)
        await sleep_until(t0 + 5.5)
        _, late, _ = await post(client, k2)
        await sleep_until(t0 + 6.5)  # the next epoch, within its first window
        assert await post(client, k1) == (202, drawn, True)  # found through KV
        assert await post(client, k2) == (202, late, True)  # last epoch's id
        await sleep_until(t0 + 9.3)  # drawn's window is over too
        status, third, replayed = await post(client, k1)
        assert (status, replayed) == (202, False)
        assert third == ids.task_id("default", k1, ids.epoch(t0) + 1)
    for task_id in (first, drawn, late, third):
        assert await requested(settings, task_id) == 1  # type: ignore[arg-type]
