"""NATS ingress: ``inbound.<tenant>.task.requested`` → admission → ``tasks.requested.<id>``.

Upstream systems publish a ``task.requested`` CloudEvent (structured JSON, or
binary mode with ``ce-*`` NATS headers; the subscriber turns both into one
JSON object) on their tenant's inbound subject. NATS permissions bind each
upstream user to its tenant's subject, so the subject's second token *is* the
authenticated tenant: ``data.tenant`` is filled in from it when absent, and a
different one is refused.

A valid event goes through admission (infra/admission.py), and the handler
returns it to be published on ``tasks.requested.<id>`` (extension attributes
kept, ``traceparent`` kept or started anew); the enrich handler then answers
``task.ready`` or ``task.rejected`` with every reason. A refusal (malformed
event, tenant mismatch, another tenant's task id, this tenant's id with another
body) never touches any task: it is a :class:`PoisonMessage` whose reason the
dead-letter forwarder copies into ``DLQ`` with the message. NATS unreachable
during admission is transient (nak, retried).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import nats.errors
from nats.js import JetStreamContext
from pydantic import ValidationError

from infra.admission import (
    AdmissionRepo,
    InconsistentEvent,
    TenantMismatch,
    admit,
    inbound_event,
)
from infra.errors import PoisonMessage, TransientError
from infra.telemetry.tracing import new_traceparent, parse_traceparent
from schemas.cloudevents import event_dict
from schemas.common import is_identifier
from schemas.events import Envelope

if TYPE_CHECKING:
    from infra.bus.subscriber import Delivery

log = logging.getLogger("radtrain.inbound")
MAX_REASONS = 5


def decode_inbound(raw: bytes) -> dict[str, Any]:
    """The event as a JSON object; validated by the handler, once the tenant is bound.
    Raises ``CloudEventFormatError`` (a ``ValueError``): the subscriber dead-letters it."""
    return event_dict(None, raw)


def tenant_of_subject(subject: str) -> str | None:
    """``inbound.<tenant>.task.requested`` → ``<tenant>``; ``None`` for any other subject."""
    parts = subject.split(".")
    if len(parts) == 4 and parts[0] == "inbound" and parts[2:] == ["task", "requested"] \
            and is_identifier(parts[1]):
        return parts[1]
    return None


def validation_summary(exc: ValidationError) -> str:
    items = [f"{'.'.join(map(str, e['loc'])) or 'event'}: {e['msg']}"
             for e in exc.errors(include_input=False)]
    more = f" (+{len(items) - MAX_REASONS} more)" if len(items) > MAX_REASONS else ""
    return "; ".join(items[:MAX_REASONS]) + more


def refused(subject: str, code: str, message: str) -> PoisonMessage:
    """Logged here; the forwarder copies the message and this reason into ``DLQ``."""
    log.warning("inbound event on %s refused: %s: %s", subject, code, message)
    return PoisonMessage(code, message)


async def handle_inbound(doc: dict[str, Any], delivery: Delivery, *, admissions: AdmissionRepo,
                         js: JetStreamContext) -> list[Envelope]:
    """``[TaskRequestedEvent]`` to publish on ``tasks.requested.<id>``; ``[]`` for a retry
    the stream already holds; :class:`PoisonMessage` for a refusal."""
    subject = delivery.subject
    tenant = tenant_of_subject(subject)
    if tenant is None:
        raise refused(subject, "invalid_subject", "not an inbound.<tenant>.task.requested subject")
    try:
        event = inbound_event(doc, tenant)
    except TenantMismatch as exc:
        raise refused(subject, "tenant_mismatch", str(exc)) from None
    except ValidationError as exc:
        raise refused(subject, "invalid_event", validation_summary(exc)) from None
    except InconsistentEvent as exc:
        raise refused(subject, "invalid_event", str(exc)) from None
    if parse_traceparent(event.traceparent) is None:
        event = event.model_copy(update={"traceparent": str(new_traceparent())})
    try:
        admission = await admit(admissions, js, event, "nats")
    except (nats.errors.Error, TimeoutError) as exc:
        raise TransientError("admission_unavailable", repr(exc)) from exc
    task_id = event.data.task_id
    if admission.outcome == "conflict":
        raise refused(subject, "task_id_conflict", f"task {task_id!r} was already requested "
                      f"by tenant {tenant!r} with a different body; use a new task id")
    if admission.outcome == "unavailable":  # the reason reaches on-call only, still no owner
        raise refused(subject, "task_id_unavailable",
                      f"task id {task_id!r} is not available to tenant {tenant!r}")
    log.info("inbound task %s of %s %s", task_id, tenant,
             "admitted" if admission.outcome == "admitted" else "retried")
    return [event] if admission.publish else []
