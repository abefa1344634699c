"""One admission step for every ingress: the tenant that first admits a task id owns it.

``POST /v1/tasks``, signed ``POST /v1/events`` and the NATS inbound subjects
(``inbound.<tenant>.task.requested``, handlers/inbound.py) all pass through
:func:`admit` before ``tasks.requested.<id>`` is published. KV ``admissions``
maps task id → :class:`~schemas.admission.AdmissionRecord`, created with
``kv.create`` (atomic: among concurrent senders exactly one admits an id).

=====================  ==============================  =====================================
found in KV            tenant, digest                  outcome
=====================  ==============================  =====================================
nothing                (any)                           ``admitted``: publish
same tenant            same request digest             ``retry``: answer the same, publish
                                                       again unless the stream already has it
same tenant            another digest                  ``conflict``: 409 naming the id
another tenant         (any)                           ``unavailable``: refused, generically
=====================  ==============================  =====================================

The tenant is always the authenticated one (API key, event-secret owner, NATS
subject token), never the body's. A task id the ``TASKS`` stream already knows
without a KV record (a task from before admission existed) is judged against
the owner its ``task.requested`` names, and that owner is written to KV.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from infra.bus.topology import KV_ADMISSIONS, TASKS_STREAM
from infra.errors import KVConflict
from infra.kv.repository import Bucket, BucketRepo
from schemas.admission import AdmissionRecord, Ingress, request_digest
from schemas.common import is_identifier
from schemas.events import TaskRequestedEvent, parse_event

log = logging.getLogger(__name__)

Outcome = Literal["admitted", "retry", "conflict", "unavailable"]
UNREADABLE_DIGEST = "0" * 64
"""Digest recorded for a stream ``task.requested`` that no longer parses: matches nothing."""
UNKNOWN_OWNER = "unknown-owner"


def decide(existing: AdmissionRecord | None, tenant: str, digest: str) -> Outcome:
    """The admission table (pure): who may use a task id, given who admitted it."""
    if existing is None:
        return "admitted"
    if existing.tenant != tenant:
        return "unavailable"
    return "retry" if existing.body_sha256 == digest else "conflict"


@dataclass(frozen=True)
class Admission:
    outcome: Outcome
    record: AdmissionRecord
    """The owner's record (this request's own when ``admitted``)."""
    publish: bool
    """Publish ``task.requested``: admitted, or a retry whose event the stream lacks."""

    @property
    def accepted(self) -> bool:
        return self.outcome in ("admitted", "retry")


class AdmissionRepo(BucketRepo[AdmissionRecord]):
    """KV ``admissions``: task id → AdmissionRecord. No TTL: a task id is used once."""

    BUCKET = Bucket(KV_ADMISSIONS, AdmissionRecord)

    async def claim(self, task_id: str, fresh: AdmissionRecord) -> tuple[Outcome, AdmissionRecord]:
        """Create ``fresh`` unless the id is taken: the outcome and the owner's record."""
        for _ in range(3):  # deleted by an operator between a failed create and the get
            if await self.kv.create(task_id, fresh) is not None:
                return "admitted", fresh
            found = await self.kv.get(task_id)
            if found is not None:
                return decide(found, fresh.tenant, fresh.body_sha256), found
        raise KVConflict(self.kv.bucket, task_id, 3)

    async def get(self, task_id: str) -> AdmissionRecord | None:
        return await self.kv.get(task_id)

    async def record_owner(self, task_id: str, owner: AdmissionRecord) -> None:
        await self.kv.put(task_id, owner)


def _owner_of(raw: RawStreamMsg) -> AdmissionRecord:
    """The owner a stream ``task.requested`` names; an unreadable one matches no request."""
    at = raw.time or datetime.now(UTC)
    try:
        event = parse_event(raw.data or b"")
    except ValidationError:
        event = None
    if isinstance(event, TaskRequestedEvent):
        return AdmissionRecord(tenant=event.data.tenant, body_sha256=request_digest(event.data),
                               ingress="events", admitted_at=at)
    tenant = _raw_tenant(raw.data or b"")
    return AdmissionRecord(tenant=tenant or UNKNOWN_OWNER, body_sha256=UNREADABLE_DIGEST,
                           ingress="events", admitted_at=at)


def _raw_tenant(data: bytes) -> str | None:
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    inner = doc.get("data") if isinstance(doc, dict) else None
    tenant = inner.get("tenant") if isinstance(inner, dict) else None
    return tenant if isinstance(tenant, str) and is_identifier(tenant) else None


async def requested_in_stream(js: JetStreamContext, task_id: str) -> RawStreamMsg | None:
    """The last ``tasks.requested.<id>`` the stream holds, if any."""
    try:
        return await js.get_last_msg(TASKS_STREAM, f"tasks.requested.{task_id}")
    except NotFoundError:
        return None


def _fresh(event: TaskRequestedEvent, ingress: Ingress, digest: str | None) -> AdmissionRecord:
    """This request's own record; ``digest`` when the caller has it already (it is the
    costliest part: canonical JSON of the whole request)."""
    return AdmissionRecord(tenant=event.data.tenant,
                           body_sha256=digest or request_digest(event.data),
                           ingress=ingress, admitted_at=datetime.now(UTC))


async def admit(repo: AdmissionRepo, js: JetStreamContext, event: TaskRequestedEvent,
                ingress: Ingress, *, minted: bool = False, digest: str | None = None
                ) -> Admission:
    """Admit ``event``'s task id for its (authenticated) tenant; see the module's table.

    ``minted``: the caller drew the id itself (a random 128-bit id, ``POST /v1/tasks``),
    so a first claim cannot name a task the stream already holds and the stream is not
    asked (one round trip fewer on the submit path); a retry of that id still is.
    ``digest``: :func:`~schemas.admission.request_digest` of ``event.data``, if known.
    NATS errors propagate (the gateway answers 503, the NATS ingress naks).
    """
    task_id, tenant = event.data.task_id, event.data.tenant
    fresh = _fresh(event, ingress, digest)
    digest = fresh.body_sha256
    outcome, record = await repo.claim(task_id, fresh)
    if outcome in ("conflict", "unavailable"):
        return Admission(outcome, record, publish=False)
    if minted and outcome == "admitted":
        return Admission(outcome, record, publish=True)
    prior = await requested_in_stream(js, task_id)
    if prior is None:
        return Admission(outcome, record, publish=True)
    owner = _owner_of(prior)
    judged = decide(owner, tenant, digest)
    if judged != "retry" and outcome == "admitted":
        # Known to the stream before admission existed: its first requester owns it.
        log.warning("task id %s was requested before it was admitted; owner recorded", task_id)
        await repo.record_owner(task_id, owner)
        return Admission(judged, owner, publish=False)
    return Admission("retry", record, publish=False)


async def admit_minted(repo: AdmissionRepo, event: TaskRequestedEvent, ingress: Ingress,
                       publish: Callable[[], Awaitable[object]], *, digest: str | None = None
                       ) -> Admission:
    """Claim a task id the caller drew itself AND publish its ``task.requested``, both at
    once: one round trip (one fsync with ``sync_interval: always``) instead of two.

    Safe only for a fresh random 128-bit id (``POST /v1/tasks``, a new Idempotency-Key):
    no one else can name it before it is published, so its claim is never refused and
    "nothing refused is published" still holds. Each half may fail alone: an admission
    without its event is finished by a retry (:func:`admit` publishes what the stream
    lacks); an event without its admission is judged by the owner it names (see the
    module's docstring), which is this tenant. The returned ``publish`` is ``False``:
    it is done. NATS errors propagate (the claim's first)."""
    fresh = _fresh(event, ingress, digest)
    publishing = asyncio.ensure_future(publish())  # goes out in the same flush as the claim
    try:
        outcome, record = await repo.claim(event.data.task_id, fresh)
    except BaseException:
        publishing.add_done_callback(_retrieved)  # superseded by the claim's error
        raise
    await publishing
    if outcome != "admitted":  # 2^-122: a drawn id met an admitted one; the msg id dedups
        log.error("drawn task id %s was already admitted (%s): published anyway",
                  event.data.task_id, outcome)
    return Admission(outcome, record, publish=False)


def _retrieved(task: asyncio.Future[object]) -> None:
    """Mark an outcome nobody awaits as seen (no "exception never retrieved" warning)."""
    if not task.cancelled():
        task.exception()


# --- the event an upstream system sent, bound to its authenticated tenant ----------------


class TenantMismatch(ValueError):
    """``data.tenant`` names another tenant than the sender's identity."""

    def __init__(self, claimed: object, tenant: str) -> None:
        super().__init__(f"data.tenant {claimed!r} is not the sender's tenant {tenant!r}")
        self.claimed = claimed
        self.tenant = tenant


class InconsistentEvent(ValueError):
    """The envelope's ``subject`` and ``data.task_id`` name different tasks."""


def bind_tenant(doc: dict[str, Any], tenant: str) -> dict[str, Any]:
    """The event (a structured CloudEvent as a dict) with ``data.tenant`` set to the
    authenticated ``tenant``: injected when absent, :class:`TenantMismatch` when another.
    ``data.task_id`` defaults to ``subject``; ``taskgeneration`` is radtrain's own
    attribute (bumped by on-call redrives), so a sender's value is dropped."""
    out = {k: v for k, v in doc.items() if k != "taskgeneration"}
    data = out.get("data")
    if isinstance(data, dict):
        data = dict(data)
        claimed = data.get("tenant")
        if claimed is None:
            data["tenant"] = tenant
        elif claimed != tenant:
            raise TenantMismatch(claimed, tenant)
        if data.get("task_id") is None and isinstance(out.get("subject"), str):
            data["task_id"] = out["subject"]
        out["data"] = data
    return out


def inbound_event(doc: dict[str, Any], tenant: str) -> TaskRequestedEvent:
    """Validate an upstream ``task.requested`` for ``tenant``. Raises :class:`TenantMismatch`,
    pydantic's ``ValidationError`` (naming the field) or :class:`InconsistentEvent`."""
    bound = bind_tenant(doc, tenant)
    # JSON mode: attribute values are JSON text (``time`` a string), as on the wire.
    event = TaskRequestedEvent.model_validate_json(json.dumps(bound))
    if event.subject != event.data.task_id:
        raise InconsistentEvent(f"subject {event.subject!r} is not data.task_id "
                                f"{event.data.task_id!r}")
    return event
