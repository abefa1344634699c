"""An Idempotency-Key's task id, derived from the key: a new key costs one JetStream write.

Claiming a key in KV ``idempotency`` and then publishing its ``task.requested`` is two
fsync'd writes in a row: the keyed path ran at 0.58× the plain one (issue 16 asks for
0.8×). Here the task id is an HMAC of (tenant, key, epoch) under a key derived from the
services' seal key, and ``tasks.requested.<id>`` is published with
``Nats-Expected-Last-Subject-Sequence: 0``: the stream refuses a second
``task.requested`` for the id, so the publish is the claim. A refused request reads the
id's first ``task.requested`` (its tenant, request digest and time) and answers by it:

=====================================  =========================================
the id's first ``task.requested``      answer
=====================================  =========================================
none (this request published it)       202, a new task
same tenant and body, within window    202 ``Idempotent-Replayed``, same task
same tenant, another body, in window   409 ``idempotency_key_reused``
older than the window (or foreign)     the KV path, with a drawn id
=====================================  =========================================

Epochs (``EPOCH_S``): a derived id must never be published again once the stream has
aged its events out (its record, lists and artifacts would be another task's), so each
epoch derives new ids, and the scheme runs only on a ``TASKS`` stream that keeps every
event at least an epoch plus a window (read from the stream at start-up; no message,
byte or per-subject limit). So whenever an id is read, the stream still holds its
first event, and a window (``idempotency_ttl_s`` ≤ an epoch) spans two epochs at most.

The band: from ``BAND_S`` before an epoch's start to the end of its first window, a key
may name last epoch's task, and two requests of one key on either side of the boundary
would each publish their own epoch's id. There the ids are read first, and a new key is
claimed in KV naming its epoch's id before it is published, so ``kv.create`` decides
across the boundary (two writes, the old cost, ~1/7 of the time with a day's window).
``BAND_S`` is the clock skew between gateways that is tolerated.

The KV path (gateway/idempotency.py: claim, then publish) also serves a key reused
after its window (a drawn id). Its records are written in the band, or while the key's
id of that epoch is out of its window, so they are read in exactly those cases.

Limits: without a seal key (or on a stream that does not keep events long enough)
every key takes the KV path; changing the seal key, or moving between gateways with
and without the scheme, forgets the keys used within the last window (a retry then
starts a second task); a window counts from the stream's storage time (NATS's clock).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, Self

import nats.errors
from aiohttp import web
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg, StreamConfig

from gateway.errors import ApiError
from gateway.idempotency import (
    IdempotencyStore,
    StoredResponse,
    key_reused,
    respond,
    submit_keyed,
    unavailable,
)
from infra.admission import first_requested_in_stream, owner_of
from infra.bus.topology import TASKS_STREAM
from infra.settings import Settings

log = logging.getLogger(__name__)

EPOCH_S = 7 * 86_400.0
EPOCH_ORIGIN_S = 0.0
"""Epoch boundaries: ``EPOCH_ORIGIN_S + n * EPOCH_S`` (Thursdays 00:00 UTC)."""
BAND_S = 60.0
DOMAIN = b"radtrain/idempotency-task-id/v1"

Verdict = Literal["absent", "replay", "conflict", "spent"]
"""What an id's first ``task.requested`` says about a request of its key: ``spent``:
out of its window (or another tenant's): the KV path decides."""
Publish = Callable[[str, bool], Awaitable[None]]


@dataclass(frozen=True)
class KeyedIds:
    """The derivation and its calendar: epochs of ``epoch_s`` from ``origin_s``, a window
    of ``ttl_s``, a band of ``band_s`` before each epoch (built by :meth:`for_stream`)."""

    secret: bytes
    """Derived from the seal key (never the seal key itself: ids are shown to tenants)."""
    ttl_s: float
    epoch_s: float
    origin_s: float
    band_s: float

    @classmethod
    def for_stream(cls, settings: Settings, seal_key: bytes | None,
                   stream: StreamConfig) -> Self | None:
        """``None`` (the KV path for every key) without a seal key, with a window longer
        than an epoch, or on a ``TASKS`` stream that may drop an event sooner than an
        epoch and a window after it was stored."""
        ttl = settings.idempotency_ttl_s
        kept = stream.max_age or 0.0  # 0: for ever
        limited = any((v or -1) > 0 for v in (stream.max_msgs, stream.max_bytes,
                                             stream.max_msgs_per_subject))
        if seal_key is None or ttl > EPOCH_S or limited or 0 < kept < EPOCH_S + ttl:
            return None
        secret = hmac.new(seal_key, DOMAIN, hashlib.sha256).digest()
        return cls(secret, ttl, EPOCH_S, EPOCH_ORIGIN_S, BAND_S)

    def epoch(self, now: float) -> int:
        return int((now - self.origin_s) // self.epoch_s)

    def task_id(self, tenant: str, key: str, epoch: int) -> str:
        """32 hex characters, as a drawn id (a tenant is an identifier: no newline)."""
        message = f"{tenant}\n{epoch}\n{key}".encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()[:32]

    def in_first_window(self, now: float) -> bool:
        """Last epoch's id of a key may still be within its window: one stored up to
        ``band_s`` after the epoch's start (a gateway's clock behind, a slow ack) is in
        its window until ``ttl_s`` after that."""
        return now - self.origin_s - self.epoch(now) * self.epoch_s < self.ttl_s + self.band_s

    def in_band(self, now: float) -> bool:
        """From ``band_s`` before an epoch's start to the end of its first window."""
        next_start = self.origin_s + (self.epoch(now) + 1) * self.epoch_s
        return self.in_first_window(now) or next_start - now <= self.band_s


async def keyed_ids_for(js: JetStreamContext, settings: Settings, seal_key: bytes | None
                        ) -> KeyedIds | None:
    """The gateway's scheme, judged on the ``TASKS`` stream as it is configured."""
    ids = KeyedIds.for_stream(settings, seal_key, (await js.stream_info(TASKS_STREAM)).config)
    if ids is None:
        log.info("Idempotency-Keys are claimed in KV: no seal key, a window longer than "
                 "%.0f days, or a TASKS stream that keeps events less than that plus the "
                 "window or has message, byte or per-subject limits", EPOCH_S / 86_400)
    return ids


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
    publish: Publish
    """The KV path's publish (``won``: the id is this request's to publish)."""
    answer: Callable[[str], StoredResponse]
    draw_id: Callable[[], str]


def purged(task_id: str) -> ApiError:
    """503: the stream refused an id's ``task.requested`` and then did not have it."""
    log.error("tasks.requested.%s was refused as present, then not found: was TASKS "
              "purged or its limits changed?", task_id)
    return ApiError(503, "unavailable", "the event stream changed under this request; "
                    "retry with the same key", headers={"Retry-After": "1"})


async def submit_derived(ids: KeyedIds, js: JetStreamContext, store: IdempotencyStore,
                         req: KeyedRequest, *, now: float | None = None) -> web.Response:
    """The keyed request answered by its derived id (see the module's docstring)."""
    at = time.time() if now is None else now
    when = datetime.fromtimestamp(at, UTC)
    epoch = ids.epoch(at)
    own = ids.task_id(req.tenant, req.key, epoch)

    async def kv_path(fresh_id: str, publish: Publish) -> web.Response:
        return await submit_keyed(store, req.tenant, req.key, fresh_id, req.digest,
                                  ttl_s=ids.ttl_s, answer=req.answer, publish=publish,
                                  now=when)

    try:
        if ids.in_band(at):
            if ids.in_first_window(at):
                last = ids.task_id(req.tenant, req.key, epoch - 1)
                verdict = await _verdict(js, last, req, when, ids.ttl_s)
                if verdict in ("replay", "conflict"):
                    return _answer(verdict, last, req)
            verdict = await _verdict(js, own, req, when, ids.ttl_s)
            if verdict == "absent":  # kv.create decides between both sides of the boundary
                return await kv_path(own, _publish_claimed(js, req, when, ids.ttl_s))
        elif await req.publish_first(own):
            return _answer("absent", own, req)
        else:
            verdict = await _verdict(js, own, req, when, ids.ttl_s)
            if verdict == "absent":
                raise purged(own)
    except (nats.errors.Error, TimeoutError) as exc:
        raise unavailable(exc) from exc
    if verdict in ("replay", "conflict"):
        return _answer(verdict, own, req)
    return await kv_path(req.draw_id(), req.publish)  # spent: a new task, a drawn id


def _publish_claimed(js: JetStreamContext, req: KeyedRequest, when: datetime,
                     ttl_s: float) -> Publish:
    """The band's publish: a claim won for a derived id is published only if the stream
    lacks it (a request from outside the band may have published it with another body:
    409); a claim lost publishes what the stream lacks, as on the KV path."""

    async def publish(task_id: str, won: bool) -> None:
        if not won:
            await req.publish(task_id, False)
        elif not await req.publish_first(task_id):
            verdict = await _verdict(js, task_id, req, when, ttl_s)
            if verdict == "conflict":
                raise key_reused(req.key, task_id)
            if verdict != "replay":
                raise purged(task_id)

    return publish


async def _verdict(js: JetStreamContext, task_id: str, req: KeyedRequest, now: datetime,
                   ttl_s: float) -> Verdict:
    return judge(await first_requested_in_stream(js, task_id), req.tenant, req.digest, now,
                 ttl_s)


def _answer(verdict: Verdict, task_id: str, req: KeyedRequest) -> web.Response:
    if verdict == "conflict":
        raise key_reused(req.key, task_id)
    return respond(req.answer(task_id), replayed=verdict == "replay")
