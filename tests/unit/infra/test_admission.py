"""Admission without a server: the decision table, the digest, binding the tenant, and
``admit`` over the in-memory KV and stream."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from nats.js.kv import KeyValue
from pydantic import ValidationError

from infra.admission import (
    AdmissionRepo,
    InconsistentEvent,
    TenantMismatch,
    admit,
    bind_tenant,
    decide,
    inbound_event,
)
from infra.kv import KVRepository
from schemas.admission import AdmissionRecord, request_digest
from schemas.cloudevents import event_dict
from schemas.events import TaskRequestedEvent, encode_event
from schemas.tasks import TaskRequest, TaskRequested
from tests.support.fake_bus import FakeJetStream
from tests.support.fake_kv import FakeKeyValue

BODY: dict[str, Any] = {
    "name": "ICH v1", "flow": "general", "task_type": "classification", "dataset_id": "ds1",
    "model": {"mode": "manual", "network": "mobilenetv3_small_100", "pretrained": False},
}
DIGEST = request_digest(TaskRequest.model_validate(BODY))
OTHER = request_digest(TaskRequest.model_validate({**BODY, "dataset_id": "ds2"}))


def record(tenant: str = "acme", digest: str = DIGEST) -> AdmissionRecord:
    return AdmissionRecord(tenant=tenant, body_sha256=digest, ingress="http",
                           admitted_at=datetime(2025, 1, 1, tzinfo=UTC))


@pytest.mark.parametrize(("existing", "tenant", "digest", "outcome"), [
    (None, "acme", DIGEST, "admitted"),
    (record(), "acme", DIGEST, "retry"),
    (record(), "acme", OTHER, "conflict"),
    (record(), "other", DIGEST, "unavailable"),
    (record(), "other", OTHER, "unavailable"),
])
def test_decision_table(existing: AdmissionRecord | None, tenant: str, digest: str,
                        outcome: str) -> None:
    assert decide(existing, tenant, digest) == outcome


# --- one digest whatever the ingress -------------------------------------------------


def _cloudevent(task_id: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"specversion": "1.0", "id": "e1", "source": "pacs", "subject": task_id,
            "type": "radtrain.task.requested.v1", "datacontenttype": "application/json",
            "dataschema": "https://example.org/task.json", "site": "north", "data": data}


def test_the_same_request_has_one_digest_through_every_ingress() -> None:
    # HTTP POST /v1/tasks: the body as the client spelled it (defaults omitted).
    http = TaskRequested(**TaskRequest.model_validate(BODY).model_dump(), task_id="t1",
                         tenant="acme", idempotency_key="k1")
    # Signed POST /v1/events, structured: tenant and task id in data, defaults spelled out.
    spelled = {**BODY, "tuning": {"mode": "auto"}, "resources": {"gpus": None},
               "description": "", "task_id": "t2", "tenant": "acme"}
    structured = inbound_event(_cloudevent("t2", spelled), "acme")
    # Binary mode (ce-* headers, data in the body), tenant injected from the identity.
    headers = {"ce-specversion": "1.0", "ce-id": "e2", "ce-source": "pacs", "ce-subject": "t3",
               "ce-type": "radtrain.task.requested.v1", "content-type": "application/json"}
    binary = inbound_event(event_dict(headers, json.dumps(BODY).encode()), "acme")
    assert binary.data.task_id == "t3" and binary.data.tenant == "acme"
    digests = {request_digest(http), request_digest(structured.data),
               request_digest(binary.data), request_digest(TaskRequest.model_validate(BODY))}
    assert digests == {DIGEST}
    assert request_digest(TaskRequest.model_validate({**BODY, "name": "ICH v2"})) != DIGEST


# --- the event an upstream sent, bound to its tenant ------------------------------------


def test_tenant_is_injected_when_absent_and_a_different_one_refused() -> None:
    event = inbound_event(_cloudevent("t1", {**BODY, "task_id": "t1"}), "acme")
    assert event.data.tenant == "acme"
    assert event.extensions == {"site": "north"}
    assert event.dataschema == "https://example.org/task.json"
    assert json.loads(encode_event(event))["site"] == "north"  # kept on the published event
    with pytest.raises(TenantMismatch, match="'other'"):
        inbound_event(_cloudevent("t1", {**BODY, "task_id": "t1", "tenant": "other"}), "acme")


def test_subject_names_the_task_and_taskgeneration_is_ours() -> None:
    doc = {**_cloudevent("t9", dict(BODY)), "taskgeneration": 7}
    bound = bind_tenant(doc, "acme")
    assert "taskgeneration" not in bound and bound["data"]["task_id"] == "t9"
    assert inbound_event(doc, "acme").taskgeneration == 1
    with pytest.raises(InconsistentEvent):
        inbound_event(_cloudevent("t9", {**BODY, "task_id": "t8"}), "acme")
    with pytest.raises(ValidationError):
        inbound_event(_cloudevent("t9", {**BODY, "flow": "bogus"}), "acme")


# --- admit over the in-memory KV and stream -------------------------------------------------


def _event(task_id: str, tenant: str, **over: Any) -> TaskRequestedEvent:
    data = TaskRequested(**TaskRequest.model_validate({**BODY, **over}).model_dump(),
                         task_id=task_id, tenant=tenant)
    return TaskRequestedEvent(source="test", subject=task_id, data=data)


def _repo() -> AdmissionRepo:
    return AdmissionRepo(KVRepository(cast(KeyValue, FakeKeyValue()), AdmissionRecord,
                                      "admissions"))


async def test_admit_publishes_once_and_refuses_others() -> None:
    repo, js = _repo(), FakeJetStream()
    first = await admit(repo, js.as_js(), _event("t1", "acme"), "nats")
    assert (first.outcome, first.publish) == ("admitted", True)
    # A retry before the event reached the stream publishes again (the msg id dedups) ...
    assert (await admit(repo, js.as_js(), _event("t1", "acme"), "events")).publish
    js.holds(_event("t1", "acme"))
    # ... after, it is answered the same without publishing.
    again = await admit(repo, js.as_js(), _event("t1", "acme"), "http")
    assert (again.outcome, again.publish) == ("retry", False)
    other = await admit(repo, js.as_js(), _event("t1", "acme", dataset_id="ds2"), "http")
    assert (other.outcome, other.publish) == ("conflict", False)
    foreign = await admit(repo, js.as_js(), _event("t1", "evil"), "nats")
    assert (foreign.outcome, foreign.publish) == ("unavailable", False)
    owner = await repo.get("t1")
    assert owner is not None and owner.tenant == "acme" and owner.ingress == "nats"


async def test_a_task_the_stream_knew_before_admission_keeps_its_owner() -> None:
    repo, js = _repo(), FakeJetStream()
    js.holds(_event("old", "acme"))  # published before KV admissions existed
    foreign = await admit(repo, js.as_js(), _event("old", "evil"), "events")
    assert (foreign.outcome, foreign.publish) == ("unavailable", False)
    owner = await repo.get("old")
    assert owner is not None and owner.tenant == "acme"  # the first requester, recorded
    mine = await admit(repo, js.as_js(), _event("old", "acme"), "events")
    assert (mine.outcome, mine.publish) == ("retry", False)


# --- a drawn id: published unclaimed, judged by the stream or its record later ----------


async def test_a_drawn_id_is_published_unclaimed_and_owned_by_its_tenant() -> None:
    """The gateway publishes a drawn id's event alone (gateway/tasks.py). Whoever names
    the id afterwards meets the owner the stream's event names (the claim made then
    records it)."""
    repo, js = _repo(), FakeJetStream()
    event = _event("drawn1", "acme")
    await js.publish(event.nats_subject, encode_event(event),
                     headers={"Nats-Msg-Id": event.msg_id})
    assert await repo.get("drawn1") is None  # no claim written
    # A retry of that id (a replayed Idempotency-Key) is judged as before: nothing twice.
    again = await admit(repo, js.as_js(), event, "http")
    assert (again.outcome, again.publish) == ("retry", False)
    foreign = await admit(repo, js.as_js(), _event("drawn1", "evil"), "events")
    assert (foreign.outcome, foreign.publish) == ("unavailable", False)
    owner = await repo.get("drawn1")
    assert owner is not None and owner.tenant == "acme"
    assert len(js.on("tasks.requested.drawn1")) == 1


class TaskRecords(FakeKeyValue):
    """KV ``tasks`` holding one record of ``tenant``'s."""

    def __init__(self, task_id: str, tenant: str) -> None:
        super().__init__("tasks")
        self._append(task_id, json.dumps({"task_id": task_id, "tenant": tenant}).encode(),
                     None)


async def test_a_drawn_id_aged_out_of_the_stream_keeps_its_owner_by_its_record() -> None:
    """``TASKS`` keeps events ``stream_max_age_days``; KV ``tasks`` keeps the record, and
    with it the owner of an id that was never claimed."""
    js = FakeJetStream()  # holds nothing: the task.requested aged out
    repo = AdmissionRepo(KVRepository(cast(KeyValue, FakeKeyValue()), AdmissionRecord,
                                      "admissions"), cast(KeyValue, TaskRecords("old", "acme")))
    foreign = await admit(repo, js.as_js(), _event("old", "evil"), "events")
    assert (foreign.outcome, foreign.publish) == ("unavailable", False)
    owner = await repo.get("old")
    assert owner is not None and owner.tenant == "acme"
    mine = await admit(repo, js.as_js(), _event("old", "acme"), "events")
    assert (mine.outcome, mine.publish) == ("conflict", False)  # never published again
    fresh = await admit(repo, js.as_js(), _event("new", "evil"), "events")
    assert (fresh.outcome, fresh.publish) == ("admitted", True)  # no record: a new id
    assert js.on("tasks.requested.old") == []
