"""The NATS ingress (handlers/inbound.py) through the real subscriber glue, on in-memory
KV and stream: what is published, what is dead-lettered, and that a refusal touches no
task; and how the forwarder files an INBOUND dead letter."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import partial
from typing import Any, cast

import nats.errors
from nats.js.api import RawStreamMsg
from nats.js.kv import KeyValue

from handlers.dead_letter_forwarder import H_TENANT, failure_event, inbound_letter
from handlers.inbound import decode_inbound, handle_inbound, tenant_of_subject
from infra.admission import AdmissionRepo
from infra.bus.consumer import RetryPlan
from infra.bus.dead_letters import H_TASK, Advisory, build_dead_letter
from infra.bus.subscriber import Subscriber, handle_message
from infra.bus.topology import ADMISSION, INBOUND_STREAM
from infra.kv import KVRepository
from schemas.admission import AdmissionRecord
from schemas.events import parse_event
from tests.support.fake_bus import FakeJetStream, FakeMsg
from tests.support.fake_kv import FakeKeyValue

PLAN = RetryPlan(stream=INBOUND_STREAM, consumer=ADMISSION, max_deliver=5, delays_s=(2.0,))
DATA: dict[str, Any] = {
    "name": "ICH v1", "flow": "general", "task_type": "classification", "dataset_id": "ds1",
    "model": {"mode": "manual", "network": "mobilenetv3_small_100", "pretrained": False},
}


class DownKV(FakeKeyValue):
    async def create(self, *args: Any, **kwargs: Any) -> int:
        raise nats.errors.NoServersError


def _repo(kv: FakeKeyValue | None = None) -> AdmissionRepo:
    return AdmissionRepo(KVRepository(cast(KeyValue, kv or FakeKeyValue()), AdmissionRecord,
                                      "admissions"))


def _structured(task_id: str, **data: Any) -> bytes:
    return json.dumps({"specversion": "1.0", "id": f"e-{task_id}", "source": "pacs",
                       "type": "radtrain.task.requested.v1", "subject": task_id,
                       "site": "north", "dataschema": "https://example.org/t.json",
                       "data": {**DATA, "task_id": task_id, **data}}).encode()


async def _deliver(repo: AdmissionRepo, js: FakeJetStream, subject: str, data: bytes,
                   headers: dict[str, str] | None = None) -> FakeMsg:
    sub = Subscriber(ADMISSION, decode_inbound, partial(handle_inbound, admissions=repo,
                                                        js=js.as_js()))
    msg = FakeMsg(subject, data)
    msg.headers = headers
    await handle_message(js.as_js(), sub, msg.as_msg(), PLAN)
    return msg


def test_tenant_comes_from_the_subject() -> None:
    assert tenant_of_subject("inbound.acme.task.requested") == "acme"
    for bad in ("inbound.acme.task", "tasks.requested.x", "inbound..task.requested",
                "inbound.a.b.task.requested"):
        assert tenant_of_subject(bad) is None


async def test_structured_event_is_admitted_and_published_with_its_extensions() -> None:
    repo, js = _repo(), FakeJetStream()
    msg = await _deliver(repo, js, "inbound.acme.task.requested", _structured("t1"))
    assert msg.outcome == ("ack", None)
    [published] = js.on("tasks.requested.")
    event = parse_event(published.data)
    assert published.subject == "tasks.requested.t1" and published.msg_id == "t1:requested"
    assert event.data.tenant == "acme"  # type: ignore[union-attr]
    assert event.extensions == {"site": "north"} and event.dataschema
    assert event.traceparent  # started anew: the sender sent none
    # The same event again (an upstream retry): acked, nothing more published.
    again = await _deliver(repo, js, "inbound.acme.task.requested", _structured("t1"))
    assert again.outcome == ("ack", None) and len(js.on("tasks.")) == 1


async def test_binary_mode_nats_headers() -> None:
    repo, js = _repo(), FakeJetStream()
    headers = {"ce-specversion": "1.0", "ce-id": "b1", "ce-source": "pacs",
               "ce-type": "radtrain.task.requested.v1", "ce-subject": "t2",
               "ce-site": "south", "content-type": "application/json"}
    msg = await _deliver(repo, js, "inbound.acme.task.requested",
                         json.dumps(DATA).encode(), headers)
    assert msg.outcome == ("ack", None)
    event = parse_event(js.on("tasks.requested.t2")[0].data)
    assert event.data.task_id == "t2" and event.extensions == {"site": "south"}  # type: ignore[union-attr]


async def _refused(repo: AdmissionRepo, js: FakeJetStream, data: bytes,
                   subject: str = "inbound.acme.task.requested") -> str:
    msg = await _deliver(repo, js, subject, data)
    kind, reason = msg.outcome  # type: ignore[misc]
    assert kind == "term" and reason.startswith("dead-letter"), msg.outcome
    assert js.on("tasks.") == []  # no task.requested, no task.failed: no task touched
    return str(reason)


async def test_refusals_are_dead_letters_that_touch_no_task() -> None:
    repo, js = _repo(), FakeJetStream()
    assert "tenant_mismatch" in await _refused(repo, js, _structured("t3", tenant="evil"))
    assert "invalid_event" in await _refused(repo, js, _structured("t3", flow="bogus"))
    assert "invalid_event" in await _refused(repo, js, b"not json at all")
    assert await repo.get("t3") is None  # nothing admitted by a refused event


async def test_another_tenants_task_id_is_refused_and_keeps_its_owner() -> None:
    repo, js = _repo(), FakeJetStream()
    await _deliver(repo, js, "inbound.acme.task.requested", _structured("t4"))
    js.published.clear()
    reason = await _refused(repo, js, _structured("t4"), "inbound.evil.task.requested")
    assert "task_id_unavailable" in reason and "acme" not in reason
    conflict = await _refused(repo, js, _structured("t4", name="other"))
    assert "task_id_conflict" in conflict
    owner = await repo.get("t4")
    assert owner is not None and owner.tenant == "acme"


async def test_nats_down_during_admission_is_a_nak() -> None:
    js = FakeJetStream()
    msg = await _deliver(_repo(DownKV()), js, "inbound.acme.task.requested", _structured("t5"))
    assert msg.outcome is not None and msg.outcome[0] == "nak"
    assert js.on("tasks.") == []


def test_an_inbound_dead_letter_names_its_tenant_and_no_task() -> None:
    adv = Advisory(kind="terminated", stream=INBOUND_STREAM, consumer=ADMISSION, stream_seq=7,
                   deliveries=1, reason="dead-letter task_id_unavailable: ...")
    original = RawStreamMsg(subject="inbound.evil.task.requested", seq=7,
                            data=_structured("victim-task"), headers=None,
                            time=datetime.now(UTC))
    raw = build_dead_letter(adv, original, "task_id_unavailable")
    assert raw.headers.get(H_TASK) == "victim-task"  # what the generic contract would do
    letter = inbound_letter(raw)
    assert letter.subject == "dlq.admission.evil" and H_TASK not in letter.headers
    assert letter.headers[H_TENANT] == "evil" and letter.data == original.data
    assert failure_event(adv, letter, "x") is None
