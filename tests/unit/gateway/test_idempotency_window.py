"""The Idempotency-Key retention window, on the in-memory KV: within it a key names its
first task; after it (by ``created_at``, whatever the bucket's TTL) a new task."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import cast

from nats.js.kv import KeyValue

from gateway.idempotency import IdempotencyRecord, IdempotencyStore, expired
from infra.kv import KVRepository
from tests.support.fake_kv import FakeKeyValue

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def test_expired_from_created_at() -> None:
    rec = IdempotencyRecord(task_id="t1", body_sha256="a", created_at=T0)
    assert not expired(rec, T0 + timedelta(seconds=59), 60)
    assert expired(rec, T0 + timedelta(seconds=60), 60)
    assert not expired(rec, T0 + timedelta(days=400), None)  # bucket TTL only


async def test_a_key_reused_after_its_window_names_a_new_task() -> None:
    store = IdempotencyStore(KVRepository(cast(KeyValue, FakeKeyValue()), IdempotencyRecord,
                                          "idempotency"))
    first, _, won = await store.claim("acme", "k", "t1", "d1", ttl_s=60, now=T0)
    assert won and first.task_id == "t1"
    within, _, won = await store.claim("acme", "k", "t2", "d2", ttl_s=60,
                                       now=T0 + timedelta(seconds=30))
    assert not won and within.task_id == "t1" and within.body_sha256 == "d1"
    after, _, won = await store.claim("acme", "k", "t3", "d2", ttl_s=60,
                                      now=T0 + timedelta(seconds=61))
    assert won and after.task_id == "t3" and after.body_sha256 == "d2"
    again, _, won = await store.claim("acme", "k", "t4", "d2", ttl_s=60,
                                      now=T0 + timedelta(seconds=62))
    assert not won and again.task_id == "t3"
    other_tenant, _, won = await store.claim("zeta", "k", "t5", "d1", ttl_s=60, now=T0)
    assert won and other_tenant.task_id == "t5"
