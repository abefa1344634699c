"""Transport glue for the handlers: decode → validate → call → publish.

Acknowledgement is decided by ``infra.consumer.dispatch`` from the typed
errors raised here.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import ValidationError

from handlers.enrich import Rejected, WeightsIndex, enrich
from handlers.projector import RecordMissing, project
from infra.errors import PoisonMessage, TransientError
from infra.events import publish_event
from infra.kv import DatasetRepo, TaskRepo
from schemas.common import ErrorDetail, is_identifier
from schemas.events import (
    Event,
    TaskReadyEvent,
    TaskRejected,
    TaskRejectedEvent,
    TaskRequestedEvent,
    parse_event,
)

if TYPE_CHECKING:
    from handlers.deliverer import WebhookContext

SOURCE = "radtrain/handlers"


@dataclass
class Deps:
    js: JetStreamContext
    datasets: DatasetRepo
    tasks: TaskRepo
    weights: WeightsIndex
    webhooks: WebhookContext | None = None


def validation_details(exc: ValidationError) -> list[ErrorDetail]:
    return [
        ErrorDetail(field=".".join(str(p) for p in e["loc"]) or "body", code=e["type"],
                    message=e["msg"])
        for e in exc.errors()
    ]


def _tenant_of(raw: bytes) -> str:
    try:
        tenant = json.loads(raw)["data"]["tenant"]
    except (ValueError, KeyError, TypeError):
        return "unknown"
    return tenant if isinstance(tenant, str) and is_identifier(tenant) else "unknown"


def decode(msg: Msg) -> Event:
    try:
        return parse_event(msg.data)
    except ValidationError as exc:
        raise PoisonMessage("invalid_event", f"{msg.subject}: {exc}") from exc


async def on_requested(msg: Msg, deps: Deps) -> None:
    task_id = msg.subject.rsplit(".", 1)[-1]
    try:
        event = parse_event(msg.data)
    except ValidationError as exc:
        if not is_identifier(task_id):
            raise PoisonMessage("invalid_event", f"{msg.subject}: {exc}") from exc
        # An upstream system published a malformed request: tell it why, on its own task.
        await _publish(deps.js, TaskRejectedEvent(source=SOURCE, subject=task_id, data=TaskRejected(
            task_id=task_id, tenant=_tenant_of(msg.data), errors=validation_details(exc))))
        return
    if not isinstance(event, TaskRequestedEvent) or event.subject != event.data.task_id:
        raise PoisonMessage("invalid_event", f"{msg.subject}: not a consistent task.requested")
    cmd = event.data
    try:
        dataset = await deps.datasets.get(cmd.dataset_id)
    except (nats.errors.Error, TimeoutError) as exc:
        raise TransientError("kv_unavailable", str(exc)) from exc
    out: TaskReadyEvent | TaskRejectedEvent
    try:
        spec = await asyncio.to_thread(enrich, cmd, dataset, deps.weights)
        out = TaskReadyEvent(source=SOURCE, subject=cmd.task_id, data=spec,
                             traceparent=event.traceparent)
    except Rejected as rej:
        out = TaskRejectedEvent(source=SOURCE, subject=cmd.task_id, traceparent=event.traceparent,
                                data=TaskRejected(task_id=cmd.task_id, tenant=cmd.tenant,
                                                  errors=rej.errors))
    await _publish(deps.js, out)


async def on_any_event(msg: Msg, deps: Deps) -> None:
    event = decode(msg)
    try:
        await deps.tasks.upsert(event.subject, lambda rec: project(rec, event))
    except RecordMissing as exc:
        raise TransientError("record_missing", f"no record yet for {exc}", delay_s=2.0) from exc
    except (nats.errors.Error, TimeoutError) as exc:
        raise TransientError("kv_unavailable", str(exc)) from exc


async def _publish(js: JetStreamContext, event: TaskReadyEvent | TaskRejectedEvent) -> None:
    try:
        await publish_event(js, event)
    except (nats.errors.Error, TimeoutError) as exc:
        raise TransientError("publish_failed", str(exc)) from exc
