"""Transport glue for the handlers: decode → validate → call → publish.

Acknowledgement is decided by ``infra.bus.consumer.dispatch`` from the typed
errors raised here.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import ValidationError

from handlers.enrich import Rejected, WeightsIndex, enrich
from handlers.flows import BaseTask
from handlers.projector import RecordMissing, project
from infra.bus.publish import publish_event
from infra.errors import PoisonMessage, TransientError
from infra.kv import DatasetRepo, TaskRepo
from infra.store import InvalidKey, ObjectNotFound, ObjectStore, StoreUnavailable
from schemas.common import ErrorDetail, is_identifier
from schemas.events import (
    Event,
    TaskReadyEvent,
    TaskRejected,
    TaskRejectedEvent,
    TaskRequestedEvent,
    parse_event,
)
from schemas.spec import TrainingSpec

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
    store: ObjectStore | None = None
    """Where a retrain's base task left its spec.json (the flows need it, nothing else)."""


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
    base = await load_base_task(deps, cmd.base_task_id) \
        if cmd.flow == "retrain" and cmd.base_task_id else None
    out: TaskReadyEvent | TaskRejectedEvent
    try:
        spec = await asyncio.to_thread(enrich, cmd, dataset, deps.weights, base)
        out = TaskReadyEvent(source=SOURCE, subject=cmd.task_id, data=spec,
                             traceparent=event.traceparent)
    except Rejected as rej:
        out = TaskRejectedEvent(source=SOURCE, subject=cmd.task_id, traceparent=event.traceparent,
                                data=TaskRejected(task_id=cmd.task_id, tenant=cmd.tenant,
                                                  errors=rej.errors))
    await _publish(deps.js, out)


async def load_base_task(deps: Deps, task_id: str) -> BaseTask | None:
    """The retrain base: its KV record, and for a completed task its spec and weights.

    The spec is read from the store and checked against the sha256 of its
    ``spec.json`` artifact, so a retrain never builds on a file changed since;
    tenant, state and a missing or unreadable spec are judged by the pure flow.
    """
    try:
        found = await deps.tasks.get(task_id)
    except (nats.errors.Error, TimeoutError) as exc:
        raise TransientError("kv_unavailable", str(exc)) from exc
    if found is None:
        return None
    rec = found[0]
    arts = {a.name: a for a in rec.artifacts}
    model, spec_art = arts.get("model.safetensors"), arts.get("spec.json")
    spec = None
    if rec.state == "completed" and spec_art is not None and deps.store is not None:
        spec = await asyncio.to_thread(_read_spec, deps.store, spec_art.key, spec_art.sha256)
    return BaseTask(task_id=rec.task_id, tenant=rec.tenant, state=rec.state, spec=spec,
                    weights_key=model.key if model else None,
                    weights_sha256=model.sha256 if model else None)


def _read_spec(store: ObjectStore, key: str, sha256: str) -> TrainingSpec | None:
    try:
        raw = store.get_bytes(key)
    except (ObjectNotFound, InvalidKey):
        return None
    except StoreUnavailable as exc:
        raise TransientError("store_unavailable", f"reading {key}: {exc}") from exc
    if hashlib.sha256(raw).hexdigest() != sha256:
        return None
    try:
        return TrainingSpec.model_validate_json(raw)
    except ValidationError:
        return None


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
