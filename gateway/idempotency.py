"""Idempotent submission: one ``Idempotency-Key`` → one task and one answer, for 24 h.

JetStream's duplicate window (minutes) already drops a re-published
``task.requested`` with the same deterministic id; this covers the day after,
and tells a retry apart from a mistake: KV ``idempotency`` holds, per tenant
and key, the task id, the sha256 of the canonical request body and the
response. ``kv.create`` is atomic, so among concurrent requests exactly one
claims the key; the others find its record.

- same body, answered before → the stored response, ``Idempotent-Replayed: true``;
- same body, still pending (in flight, or a gateway died between claim and
  answer) → publish again unless the stream already has it (the msg id makes
  a concurrent double publish harmless), then answer;
- different body → 409: the key is bound to the first request.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
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
    """``None`` while the first request has not answered yet."""


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


class IdempotencyStore(BucketRepo[IdempotencyRecord]):
    """KV ``idempotency``: ``<tenant>.<sha256 of the client's key>`` → IdempotencyRecord."""

    BUCKET = Bucket(KV_IDEMPOTENCY, IdempotencyRecord)

    async def claim(self, tenant: str, key: str, task_id: str, digest: str
                    ) -> tuple[IdempotencyRecord, int, bool]:
        """The record for this key and its revision; ``True`` when this call created it."""
        fresh = IdempotencyRecord(task_id=task_id, body_sha256=digest,
                                  created_at=datetime.now(UTC))
        k = kv_key(tenant, key)
        for _ in range(3):  # the key may expire between a failed create and the get
            revision = await self.kv.create(k, fresh)
            if revision is not None:
                return fresh, revision, True
            found = await self.kv.get_entry(k)
            if found is not None:
                return found[0], found[1], False
        raise KVConflict(self.kv.bucket, k, 3)

    async def complete(self, tenant: str, key: str, record: IdempotencyRecord,
                       revision: int) -> None:
        """Store the answer; if a concurrent request stored it first, theirs stands."""
        await self.kv.compare_and_set(kv_key(tenant, key), record, revision)


def respond(stored: StoredResponse, replayed: bool) -> web.Response:
    headers = dict(stored.headers)
    if replayed:
        headers[REPLAYED] = "true"
    return web.json_response(stored.body, status=stored.status, headers=headers)


async def submit_once(
    store: IdempotencyStore, tenant: str, key: str, task_id: str, digest: str, *,
    answer: StoredResponse,
    publish: Callable[[], Awaitable[None]],
    published: Callable[[], Awaitable[bool]],
) -> web.Response:
    """Publish at most once per key: the claim's winner publishes; a loser publishes
    only if the stream lacks the event (its winner died), which the msg id makes safe."""
    try:
        record, revision, won = await store.claim(tenant, key, task_id, digest)
        if record.body_sha256 != digest:
            raise ApiError(409, "idempotency_key_reused",
                           f"{HEADER} {key!r} was already used with a different request body "
                           f"(task {record.task_id}); send a new key for a new task")
        if record.response is not None:
            return respond(record.response, replayed=True)
        if won or not await published():
            await publish()
    except (nats.errors.Error, TimeoutError) as exc:
        raise unavailable(exc) from exc
    try:
        await store.complete(tenant, key, record.model_copy(update={"response": answer}),
                             revision)
    except (nats.errors.Error, TimeoutError):
        pass  # published and answered; a retry finds the event in the stream
    return respond(answer, replayed=not won)
