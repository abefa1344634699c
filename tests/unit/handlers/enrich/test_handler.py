"""The enrich handler's async glue (handlers/enrich/handler.py) over in-memory fakes."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import pytest

from handlers.enrich import WeightsRef, enrich
from handlers.enrich.handler import handle_requested
from infra.errors import PoisonMessage, TransientError
from infra.store import ObjectNotFound, StoreUnavailable
from schemas.dataset import DatasetSummary
from schemas.events import Artifact, TaskReadyEvent, TaskRejectedEvent, TaskRequestedEvent
from schemas.record import TaskRecord
from schemas.tasks import TaskRequested
from tests.support.factories import dataset, request

TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class Weights:
    def find(self, entry_id: str) -> WeightsRef | None:
        return WeightsRef(f"zoo/weights/{entry_id}.safetensors", "a" * 64)


class Datasets:
    def __init__(self, found: DatasetSummary | None = None, fail: bool = False) -> None:
        self.found, self.fail = found, fail

    async def get(self, dataset_id: str) -> DatasetSummary | None:
        if self.fail:
            raise TimeoutError("kv timed out")
        return self.found if self.found is not None and self.found.id == dataset_id else None


class Tasks:
    def __init__(self, records: dict[str, TaskRecord] | None = None) -> None:
        self.records = records or {}

    async def get(self, task_id: str) -> tuple[TaskRecord, int] | None:
        rec = self.records.get(task_id)
        return (rec, 1) if rec is not None else None


class Store:
    def __init__(self, objects: dict[str, bytes] | None = None, down: bool = False) -> None:
        self.objects, self.down = objects or {}, down

    def get_bytes(self, key: str) -> bytes:
        if self.down:
            raise StoreUnavailable("store down")
        if key not in self.objects:
            raise ObjectNotFound(key)
        return self.objects[key]


def event(cmd: TaskRequested, subject: str | None = None) -> TaskRequestedEvent:
    return TaskRequestedEvent(source="test", subject=subject or cmd.task_id, data=cmd,
                              traceparent=TRACE)


async def handle(ev: TaskRequestedEvent, *, datasets: Any = None, tasks: Any = None,
                 store: Any = None) -> list[Any]:
    return await handle_requested(ev, None,  # type: ignore[arg-type]
                                  datasets=datasets or Datasets(dataset()),
                                  tasks=tasks or Tasks(), store=store or Store(),
                                  weights=Weights())


async def test_a_valid_request_answers_one_ready_event_with_the_spec() -> None:
    cmd = request()
    (out,) = await handle(event(cmd))
    assert isinstance(out, TaskReadyEvent)
    assert out.subject == "t1" and out.traceparent == TRACE and out.source == "radtrain/handlers"
    assert out.data == enrich(cmd, dataset(), Weights())


async def test_every_reason_comes_back_as_one_rejected_event() -> None:
    cmd = request(preset="pneumothorax")
    (out,) = await handle(event(cmd), datasets=Datasets(None))
    assert isinstance(out, TaskRejectedEvent)
    assert (out.data.task_id, out.data.tenant, out.traceparent) == ("t1", "default", TRACE)
    assert {(e.field, e.code) for e in out.data.errors} == {
        ("preset", "not_allowed"), ("dataset_id", "dataset_not_found")}


async def test_an_event_about_another_task_is_poison() -> None:
    with pytest.raises(PoisonMessage) as exc:
        await handle(event(request(), subject="t9"))
    assert exc.value.code == "invalid_event"


async def test_a_kv_outage_is_transient() -> None:
    with pytest.raises(TransientError) as exc:
        await handle(event(request()), datasets=Datasets(fail=True))
    assert exc.value.code == "kv_unavailable"


def base_record(spec_bytes: bytes, sha: str | None = None, state: str = "completed"
                ) -> TaskRecord:
    now = datetime(2024, 1, 1, tzinfo=UTC)

    def art(name: str, key: str, sha256: str) -> Artifact:
        return Artifact(name=name, key=key, uri=f"file:///{key}", sha256=sha256, size=1)
    return TaskRecord(
        task_id="t1", tenant="default", name="base", state=state, flow="general",
        dataset_id="ds1", created_at=now, updated_at=now, artifacts=[
            art("spec.json", "runs/t1/spec.json",
                sha or hashlib.sha256(spec_bytes).hexdigest()),
            art("model.safetensors", "runs/t1/model.safetensors", "b" * 64)])


async def test_retrain_loads_the_base_spec_checked_against_its_sha256() -> None:
    base_spec = enrich(request(), dataset(), Weights())
    raw = base_spec.model_dump_json().encode()
    store = Store({"runs/t1/spec.json": raw})
    cmd = request(task_id="t2", flow="retrain", task_type=None, model=None, base_task_id="t1")
    (out,) = await handle(event(cmd), tasks=Tasks({"t1": base_record(raw)}), store=store)
    assert isinstance(out, TaskReadyEvent)
    assert out.data.lineage is not None and out.data.lineage.base_task_id == "t1"
    assert out.data.model.weights_key == "runs/t1/model.safetensors"
    # a spec changed since the base completed is as good as none
    (out,) = await handle(event(cmd), tasks=Tasks({"t1": base_record(raw, sha="c" * 64)}),
                          store=store)
    assert isinstance(out, TaskRejectedEvent)
    assert [(e.field, e.code) for e in out.data.errors] == [("base_task_id", "base_spec_missing")]
    with pytest.raises(TransientError) as exc:
        await handle(event(cmd), tasks=Tasks({"t1": base_record(raw)}), store=Store(down=True))
    assert exc.value.code == "store_unavailable"


@pytest.mark.parametrize("found", [dataset(), None], ids=["ready", "rejected"])
async def test_the_outcome_carries_extensions_and_generation_of_the_request(
        found: DatasetSummary | None) -> None:
    """A redriven request of generation 2 yields a ready/rejected of generation 2 (its own
    msg id, not the generation-1 outcome's), with the sender's extension attributes."""
    cmd = request()
    ev = TaskRequestedEvent(source="pacs", subject="t1", data=cmd, taskgeneration=2,
                            **{"tenantref": "ward-7", "priority": 3})
    (out,) = await handle(ev, datasets=Datasets(found))
    assert isinstance(out, TaskReadyEvent if found else TaskRejectedEvent)
    assert out.taskgeneration == 2 and out.msg_id == f"t1:{out.name}:g2"
    assert out.extensions == {"tenantref": "ward-7", "priority": 3}
