"""The enrich handler's async glue: ``task.requested -> [task.ready | task.rejected]``.

It loads what the pure :func:`handlers.enrich.enrich` needs (the dataset
summary from KV ``datasets``, a retrain's base task from KV ``tasks`` and its
``spec.json`` from the store), runs it off the event loop and returns the one
event to publish; the subscriber publishes it and settles the message from the
typed errors raised here (DESIGN.md §9): an inconsistent event is a
:class:`PoisonMessage`, a KV or store outage a :class:`TransientError`.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import nats.errors
from pydantic import ValidationError

from handlers.enrich import enrich
from handlers.enrich.contracts import BaseTask, Rejected, WeightsIndex
from infra.errors import PoisonMessage, TransientError
from infra.kv import DatasetRepo, TaskRepo
from infra.store import InvalidKey, ObjectNotFound, ObjectStore, StoreUnavailable
from schemas.events import (
    Envelope,
    TaskReadyEvent,
    TaskRejected,
    TaskRejectedEvent,
    TaskRequestedEvent,
)
from schemas.pools import DEFAULT_POOLS, RunnerPool
from schemas.spec import TrainingSpec

if TYPE_CHECKING:
    from infra.bus.subscriber import Delivery, SharedReads
    from schemas.dataset import DatasetSummary

    DatasetReads = SharedReads[str, DatasetSummary | None]

SOURCE = "radtrain/handlers"


async def handle_requested(event: TaskRequestedEvent, delivery: Delivery, *, datasets: DatasetRepo,
                           tasks: TaskRepo, store: ObjectStore,
                           weights: WeightsIndex,
                           pools: Sequence[RunnerPool] = DEFAULT_POOLS,
                           dataset_reads: DatasetReads | None = None) -> list[Envelope]:
    """``[TaskReadyEvent]`` with the resolved spec, or ``[TaskRejectedEvent]`` with every reason.

    ``dataset_reads``: requests handled side by side read one dataset once
    (infra/bus/subscriber.py :class:`SharedReads`, never an older read than their own)."""
    if event.subject != event.data.task_id:
        raise PoisonMessage("invalid_event",
                            f"task.requested for {event.subject!r} carries task "
                            f"{event.data.task_id!r}: not a consistent task.requested")
    cmd = event.data
    try:
        dataset = await (dataset_reads.get(cmd.dataset_id, delivery) if dataset_reads
                         else datasets.get(cmd.dataset_id))
    except (nats.errors.Error, TimeoutError) as exc:
        raise TransientError("kv_unavailable", str(exc)) from exc
    base = await load_base_task(tasks, store, cmd.base_task_id) \
        if cmd.flow == "retrain" and cmd.base_task_id else None
    try:
        spec = await asyncio.to_thread(enrich, cmd, dataset, weights, base, pools)
    except Rejected as rej:
        return [TaskRejectedEvent(source=SOURCE, subject=cmd.task_id,
                                  traceparent=event.traceparent, **event.carry(),
                                  data=TaskRejected(task_id=cmd.task_id, tenant=cmd.tenant,
                                                    errors=rej.errors))]
    # carry(): the sender's extension attributes and the task's generation, so a
    # redriven task.requested of generation 2 yields a task.ready of generation 2
    return [TaskReadyEvent(source=SOURCE, subject=cmd.task_id, data=spec,
                           traceparent=event.traceparent, **event.carry())]


async def load_base_task(tasks: TaskRepo, store: ObjectStore | None,
                         task_id: str) -> BaseTask | None:
    """The retrain base: its KV record, and for a completed task its spec and weights.

    The spec is read from the store and checked against the sha256 of its
    ``spec.json`` artifact, so a retrain never builds on a file changed since;
    tenant, state and a missing or unreadable spec are judged by the pure flow.
    """
    try:
        found = await tasks.get(task_id)
    except (nats.errors.Error, TimeoutError) as exc:
        raise TransientError("kv_unavailable", str(exc)) from exc
    if found is None:
        return None
    rec = found[0]
    arts = {a.name: a for a in rec.artifacts}
    model, spec_art = arts.get("model.safetensors"), arts.get("spec.json")
    spec = None
    if rec.state == "completed" and spec_art is not None and store is not None:
        spec = await asyncio.to_thread(_read_spec, store, spec_art.key, spec_art.sha256)
    return BaseTask(task_id=rec.task_id, tenant=rec.tenant, state=rec.state, spec=spec,
                    weights_key=model.key if model else None,
                    weights_sha256=model.sha256 if model else None)


def _read_spec(store: ObjectStore, key: str, sha256: str) -> TrainingSpec | None:
    """The spec at ``key`` if it is there, unchanged (``sha256``) and valid; else ``None``."""
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
