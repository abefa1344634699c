"""An Idempotency-Key's task id, derived from the key: a new key costs one JetStream write.

Claiming a key in KV ``idempotency`` and then publishing its ``task.requested`` is two
fsync'd writes in a row: the keyed path ran at 0.58× the plain one (issue 16 asks for
0.8×). Here the task id is an HMAC of (tenant, key, epoch) under the services' seal key,
and ``tasks.requested.<id>`` is published with ``Nats-Expected-Last-Subject-Sequence:
0``: the stream itself refuses a second ``task.requested`` for the id, so the publish is
the claim. A request whose publish is refused reads the first ``task.requested`` of the
id (its tenant, its request digest, its time) and answers by it:

=====================================  =========================================
the id's first ``task.requested``      answer
=====================================  =========================================
none (this request published it)       202, a new task
same tenant and body, within window    202 ``Idempotent-Replayed``, same task
same tenant, another body, in window   409 ``idempotency_key_reused``
older than the window (or foreign)     KV ``idempotency`` decides (below)
=====================================  =========================================

Why an epoch: a derived id must never be published again once the stream has aged its
events out (its record, artifacts and lists would be another task's). Each epoch
(``EPOCH_S``) derives new ids, and the scheme runs only where the stream keeps events
at least an epoch plus a window (``stream_max_age_days``), so within an epoch the
stream always still holds an id's first event. In the first window of an epoch a key
may still name last epoch's task: that id is read first (one read, no write).

Why a secret: an id computable from (tenant, key) would let another tenant probe, by
naming it on ``POST /v1/events``, which keys a tenant has used. No secret (no seal key)
→ every keyed request takes the KV path.

The KV path (gateway/idempotency.py: claim a drawn id, then publish) serves a key
reused after its window: the key's next task gets a drawn id recorded in KV. Such a
record is only ever written while the key's derived id of the same epoch is out of its
window, so wherever a derived id is found out of its window, the KV record is the one
to consult, and nowhere else.

Limits: records written by gateways from before this scheme are not consulted (a key
used within the window before an upgrade and retried after it starts a second task);
gateways whose clocks disagree by more than the gap between two concurrent requests
of one key at an epoch boundary can start two tasks for it.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, Self

import nats.errors
from aiohttp import web
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg

from gateway.idempotency import (
    REPLAYED,
    IdempotencyStore,
    StoredResponse,
    answer_recorded,
    key_reused,
    unavailable,
)
from infra.admission import first_requested_in_stream, owner_of
from infra.settings import Settings

EPOCH_S = 7 * 86_400.0
"""How long one derivation of ids lasts: a read precedes the write in the first
``idempotency_ttl_s`` of each (1/7 of the time with the default day-long window)."""
DOMAIN = b"radtrain/idempotency-task-id/v1\n"

Verdict = Literal["absent", "replay", "conflict", "spent"]
"""What an id's first ``task.requested`` says about a request of its key: ``spent``:
out of its window (or another tenant's): the KV path decides."""


@dataclass(frozen=True)
class KeyedIds:
    secret: bytes
    ttl_s: float
    epoch_s: float

    @classmethod
    def for_gateway(cls, settings: Settings, secret: bytes | None) -> Self | None:
        """``None`` (the KV path for every key) without a secret, or where the stream
        ages events out before an epoch and a window have passed."""
        kept_s = settings.stream_max_age_days * 86_400.0
        if secret is None or kept_s < EPOCH_S + settings.idempotency_ttl_s:
            return None
        return cls(secret, settings.idempotency_ttl_s, EPOCH_S)

    def epoch(self, now: float) -> int:
        return int(now // self.epoch_s)

    def task_id(self, tenant: str, key: str, epoch: int) -> str:
        """32 hex characters, as a drawn id (a tenant is an identifier: no newline)."""
        message = DOMAIN + f"{tenant}\n{epoch}\n{key}".encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()[:32]

    def in_first_window(self, now: float) -> bool:
        """Last epoch's id of a key may still be within its window."""
        return now - self.epoch(now) * self.epoch_s < self.ttl_s


def judge(first: RawStreamMsg | None, tenant: str, digest: str, now: datetime,
          ttl_s: float) -> Verdict:
    """The table of the module's docstring, for an id's first ``task.requested``."""
    if first is None:
        return "absent"
    owner = owner_of(first)
    if owner.tenant != tenant or now - owner.admitted_at >= timedelta(seconds=ttl_s):
        return "spent"
    return "replay" if owner.body_sha256 == digest else "conflict"


@dataclass(frozen=True)
class KeyedRequest:
    """One keyed ``POST /v1/tasks``, with what the gateway does for it."""

    tenant: str
    key: str
    digest: str
    publish_first: Callable[[str], Awaitable[bool]]
    """Publish the id's ``task.requested`` unless the stream holds one: ``True`` if it did."""
    publish: Callable[[str, bool], Awaitable[None]]
    """The KV path's publish (``won``: the id was drawn by this request)."""
    answer: Callable[[str], StoredResponse]


async def submit_derived(ids: KeyedIds, js: JetStreamContext, store: IdempotencyStore,
                         req: KeyedRequest, *,
                         kv_path: Callable[[], Awaitable[web.Response]],
                         now: float | None = None) -> web.Response:
    """The keyed request answered by its derived id (see the module's docstring)."""
    at = time.time() if now is None else now
    when = datetime.fromtimestamp(at, UTC)
    epoch = ids.epoch(at)
    try:
        if ids.in_first_window(at):
            last = ids.task_id(req.tenant, req.key, epoch - 1)
            verdict = await _verdict(js, last, req, when, ids.ttl_s)
            if verdict in ("replay", "conflict"):
                return _answer(verdict, last, req)
            if verdict == "spent":  # the key may have gone on to the KV path since
                record = await store.recorded(req.tenant, req.key, ids.ttl_s, when)
                if record is not None:
                    return await answer_recorded(record, False, req.key, req.digest,
                                                 answer=req.answer, publish=req.publish)
        task_id = ids.task_id(req.tenant, req.key, epoch)
        if await req.publish_first(task_id):
            return _answer("absent", task_id, req)
        verdict = await _verdict(js, task_id, req, when, ids.ttl_s)
    except (nats.errors.Error, TimeoutError) as exc:
        raise unavailable(exc) from exc
    if verdict in ("replay", "conflict"):
        return _answer(verdict, task_id, req)
    return await kv_path()  # spent (or purged since the refusal): a drawn id, in KV


async def _verdict(js: JetStreamContext, task_id: str, req: KeyedRequest, now: datetime,
                   ttl_s: float) -> Verdict:
    return judge(await first_requested_in_stream(js, task_id), req.tenant, req.digest, now,
                 ttl_s)


def _answer(verdict: Verdict, task_id: str, req: KeyedRequest) -> web.Response:
    if verdict == "conflict":
        raise key_reused(req.key, task_id)
    stored = req.answer(task_id)
    headers = dict(stored.headers) | ({REPLAYED: "true"} if verdict == "replay" else {})
    return web.json_response(stored.body, status=stored.status, headers=headers)
