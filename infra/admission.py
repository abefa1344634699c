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
the owner its ``task.requested`` names, and that owner is written to KV. An id the
gateway draws itself (``POST /v1/tasks`` without an Idempotency-Key) is never claimed:
nobody can name it before its ``task.requested`` is published (one JetStream write,
not two), so it is judged that way too, or by its task record (KV ``tasks``) once the
stream has aged the event out. So is an id derived from an Idempotency-Key
(gateway/keyed_ids.py): nobody without the services' seal key can compute it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Self

from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from infra.bus.topology import KV_ADMISSIONS, KV_TASKS, TASKS_STREAM
from infra.errors import KVConflict
from infra.kv.repository import Bucket, BucketRepo, KVRepository
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
    """KV ``admissions``: task id → AdmissionRecord. No TTL: a task id is used once.

    ``tasks``: KV ``tasks``, whose records name their tenant: the owner of an id drawn
    by the gateway (never claimed here) once the ``TASKS`` stream has aged its
    ``task.requested`` out (``None``: not consulted, as in unit tests of the table)."""

    BUCKET = Bucket(KV_ADMISSIONS, AdmissionRecord)

    def __init__(self, kv: KVRepository[AdmissionRecord], tasks: KeyValue | None = None
                 ) -> None:
        super().__init__(kv)
        self.tasks = tasks

    @classmethod
    async def open(cls, js: JetStreamContext, *, seal_key: bytes | None = None) -> Self:
        return cls(await cls.BUCKET.open(js, seal_key), await js.key_value(KV_TASKS))

    async def recorded_owner(self, task_id: str) -> AdmissionRecord | None:
        """The tenant the task's record (KV ``tasks``) names, with a digest that matches
        no request: a retry of an aged-out task is a conflict, never published again."""
        if self.tasks is None:
            return None
        try:
            entry = await self.tasks.get(task_id)
        except KeyNotFoundError:
            return None
        tenant = _tenant_in(_json(entry.value or b""))
        if tenant is None:
            return None
        return AdmissionRecord(tenant=tenant, body_sha256=UNREADABLE_DIGEST, ingress="http",
                               admitted_at=datetime.now(UTC))

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


def owner_of(raw: RawStreamMsg) -> AdmissionRecord:
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
    doc = _json(data)
    return _tenant_in(doc.get("data") if isinstance(doc, dict) else None)


def _json(data: bytes) -> object:
    try:
        return json.loads(data)
    except ValueError:
        return None


def _tenant_in(doc: object) -> str | None:
    """``doc["tenant"]`` when ``doc`` is a dict and that is an identifier."""
    tenant = doc.get("tenant") if isinstance(doc, dict) else None
    return tenant if isinstance(tenant, str) and is_identifier(tenant) else None


async def first_requested_in_stream(js: JetStreamContext, task_id: str
                                    ) -> RawStreamMsg | None:
    """The first ``tasks.requested.<id>`` the stream holds (a redrive publishes others
    later: the first one's time is when the task was requested), if any."""
    try:
        return await js.get_msg(TASKS_STREAM, seq=1, subject=f"tasks.requested.{task_id}",
                                next=True)
    except NotFoundError:
        return None


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
                ingress: Ingress, *, digest: str | None = None) -> Admission:
    """Admit ``event``'s task id for its (authenticated) tenant; see the module's table.

    ``digest``: :func:`~schemas.admission.request_digest` of ``event.data``, if known.
    NATS errors propagate (the gateway answers 503, the NATS ingress naks).
    """
    task_id, tenant = event.data.task_id, event.data.tenant
    fresh = _fresh(event, ingress, digest)
    digest = fresh.body_sha256
    outcome, record = await repo.claim(task_id, fresh)
    if outcome in ("conflict", "unavailable"):
        return Admission(outcome, record, publish=False)
    prior = await requested_in_stream(js, task_id)
    owner = owner_of(prior) if prior is not None else await repo.recorded_owner(task_id)
    if owner is None:
        return Admission(outcome, record, publish=True)
    judged = decide(owner, tenant, digest)
    if judged != "retry" and outcome == "admitted":
        # Requested without a claim (an id the gateway drew, or from before admission
        # existed): its first requester owns it, recorded now.
        log.info("task id %s was requested without a claim; owner recorded", task_id)
        await repo.record_owner(task_id, owner)
        return Admission(judged, owner, publish=False)
    return Admission("retry", record, publish=False)


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
