"""Idempotent submission: one ``Idempotency-Key`` → one task and one answer, for a window.

``POST /v1/tasks`` derives a new key's task id and lets the stream decide
(gateway/keyed_ids.py: one write). This module is the KV path: a key reused after its
window, a key in the band around a week's start, every key of a gateway without a
seal key, and dataset imports (:func:`submit_once`).

KV ``idempotency`` holds, per tenant and key, the task id the key names, the
sha256 of the canonical request body and the response. ``kv.create`` is atomic,
so among concurrent requests exactly one claims the key; the others find its
record.

- same body → the stored response, ``Idempotent-Replayed: true``, after
  publishing again what the stream lacks (the first request may be in flight,
  or its gateway died between claim and publish; the msg id makes a concurrent
  double publish harmless);
- different body → 409: the key is bound to the first request.

The record is created with its answer already in it (a 202 names only the task
id), so a key new to KV costs one round trip (``kv.create``), not read + create +
complete.

The retention window is ``settings.idempotency_ttl_s`` (24 h by default): the
bucket's TTL drops old keys, and a record older than the window counts as
absent even where the bucket was created with a longer TTL. A key reused after
its window starts a NEW task (a fresh task id, answered without
``Idempotent-Replayed``), never silently the old one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import nats.errors
from aiohttp import web
from pydantic import BaseModel

from gateway.errors import ApiError
from infra.bus.topology import KV_IDEMPOTENCY
from infra.errors import KVConflict
from infra.kv import Bucket, BucketRepo

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
MAX_KEY_CHARS = 255


class StoredResponse(BaseModel):
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = {}


class IdempotencyRecord(BaseModel):
    task_id: str
    body_sha256: str
    created_at: datetime
    response: StoredResponse | None = None
    """The answer, stored with the claim (``None`` only in records of older gateways)."""


def request_key(request: web.Request) -> str | None:
    key = request.headers.get(HEADER)
    if key is not None and not 0 < len(key) <= MAX_KEY_CHARS:
        raise ApiError(400, "invalid_header", f"{HEADER} must be 1-{MAX_KEY_CHARS} characters")
    return key


def body_digest(model: BaseModel) -> str:
    """Of the validated request, canonically encoded: spacing and key order do not matter."""
    canonical = json.dumps(model.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def kv_key(tenant: str, key: str) -> str:
    """KV keys allow few characters; a client's key allows any, so it is hashed."""
    return f"{tenant}.{hashlib.sha256(key.encode()).hexdigest()}"


def unavailable(exc: BaseException) -> ApiError:
    return ApiError(503, "unavailable", f"event bus unavailable, retry later: {exc!r}",
                    headers={"Retry-After": "1"})


def expired(record: IdempotencyRecord, now: datetime, ttl_s: float | None) -> bool:
    """Past its retention window (``None``: only the bucket's TTL ends it)."""
    return ttl_s is not None and now - record.created_at >= timedelta(seconds=ttl_s)


class IdempotencyStore(BucketRepo[IdempotencyRecord]):
    """KV ``idempotency``: ``<tenant>.<sha256 of the client's key>`` → IdempotencyRecord."""

    BUCKET = Bucket(KV_IDEMPOTENCY, IdempotencyRecord)

    async def claim(self, tenant: str, key: str, task_id: str, digest: str, *,
                    answer: StoredResponse | None = None, ttl_s: float | None = None,
                    now: datetime | None = None) -> tuple[IdempotencyRecord, int, bool]:
        """The record for this key and its revision; ``True`` when this call created it
        (with ``answer`` in it).

        Create first: a new key, the common case, costs one round trip. A record older
        than ``ttl_s`` is replaced (compare-and-set, so among concurrent requests one
        replaces it) by a fresh one naming ``task_id``."""
        now = now or datetime.now(UTC)
        fresh = IdempotencyRecord(task_id=task_id, body_sha256=digest, created_at=now,
                                  response=answer)
        k = kv_key(tenant, key)
        revision = await self.kv.create(k, fresh)
        if revision is not None:
            return fresh, revision, True
        for _ in range(3):  # the key may expire (or be replaced) between two calls
            found = await self.kv.get_entry(k)
            if found is not None and not expired(found[0], now, ttl_s):
                return found[0], found[1], False
            revision = await self.kv.compare_and_set(k, fresh, found[1] if found else 0)
            if revision is not None:
                return fresh, revision, True
        raise KVConflict(self.kv.bucket, k, 3)


def respond(stored: StoredResponse, replayed: bool) -> web.Response:
    headers = dict(stored.headers)
    if replayed:
        headers[REPLAYED] = "true"
    return web.json_response(stored.body, status=stored.status, headers=headers)


def key_reused(key: str, task_id: str) -> ApiError:
    return ApiError(409, "idempotency_key_reused",
                    f"{HEADER} {key!r} was already used with a different request body "
                    f"(task {task_id}); send a new key for a new task")


async def submit_keyed(
    store: IdempotencyStore, tenant: str, key: str, fresh_id: str, digest: str, *,
    ttl_s: float | None,
    answer: Callable[[str], StoredResponse],
    publish: Callable[[str, bool], Awaitable[None]],
    now: datetime | None = None,
) -> web.Response:
    """One key → one id → one answer. ``fresh_id`` is the id a new (or expired) key gets;
    ``publish(id, won)`` is always called, ``won`` when this request claimed the key (a
    replay publishes only what the stream lacks: the callee decides). ``now``: when the
    request was decided (the record's ``created_at``)."""
    try:
        record, _, won = await store.claim(tenant, key, fresh_id, digest, ttl_s=ttl_s,
                                           answer=answer(fresh_id), now=now)
        if record.body_sha256 != digest:
            raise key_reused(key, record.task_id)
        await publish(record.task_id, won)
    except (nats.errors.Error, TimeoutError) as exc:
        raise unavailable(exc) from exc
    return respond(record.response or answer(record.task_id), replayed=not won)


async def submit_once(
    store: IdempotencyStore, tenant: str, key: str, task_id: str, digest: str, *,
    answer: StoredResponse,
    publish: Callable[[], Awaitable[None]],
    published: Callable[[], Awaitable[bool]],
) -> web.Response:
    """For ids derived from the key (dataset imports): publish at most once per key: the
    claim's winner publishes; a loser only if the stream lacks the event (its winner
    died), which the msg id makes safe. Only the bucket's TTL ends a key here."""

    async def publish_once(_: str, won: bool) -> None:
        if won or not await published():
            await publish()

    return await submit_keyed(store, tenant, key, task_id, digest, ttl_s=None,
                              answer=lambda _: answer, publish=publish_once)
