"""CloudEvents as other systems send them: built with the official Python SDK
(``cloudevents`` on PyPI), with an extension attribute and ``dataschema``, in structured
and in binary mode, over signed ``POST /v1/events`` and over NATS as an upstream user.

Each one goes through admission to the real enrich handler and reaches ``ready`` (not
the DLQ); ``GET /v1/tasks/{id}`` answers 200 and the published ``task.requested``
keeps the extension. Refusals over NATS land in ``DLQ`` as ``dlq.admission.<tenant>``
and touch no task.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.v1.event import CloudEvent

from handlers.dead_letter_forwarder import H_TENANT
from infra.bus.dead_letters import H_TASK
from radtrain.oncall.dead_letter_ops import list_dead_letters
from tests.faults.helpers import subject_counts, wait_for
from tests.support.nats_users import NatsUsers
from tests.support.upstream_stack import (
    SCHEMA,
    TRACE,
    Stack,
    reached,
    requested,
    signed,
    stack,
    task_data,
)

pytestmark = pytest.mark.integration

__all__ = ["stack"]  # the fixture


def sdk_event(task_id: str, ds_id: str, **attributes: Any) -> CloudEvent:
    """What an upstream system builds with the SDK: no tenant in data (its identity says it)."""
    return CloudEvent(attributes={
        "type": "radtrain.task.requested.v1", "source": "urn:pacs:bridge-7", "subject": task_id,
        "datacontenttype": "application/json", "dataschema": SCHEMA, "site": "north",
        **attributes}, data=task_data(task_id, ds_id))


@pytest.mark.parametrize("mode", ["structured", "binary"])
async def test_sdk_event_over_http_reaches_ready(stack: Stack, mode: str) -> None:
    task_id = f"http-{mode}-{uuid.uuid4().hex[:8]}"
    event = sdk_event(task_id, stack.dataset_id)
    message = (ce_http.to_structured_event(event) if mode == "structured"
               else ce_http.to_binary_event(event))
    body = message.body
    resp = await stack.client.post("/v1/events", data=body,
                                   headers=signed(stack.secret, dict(message.headers), body))
    assert resp.status == 202, await resp.text()
    assert (await resp.json())["task_id"] == task_id
    await reached(stack, task_id)
    published = await requested(stack.js, task_id)
    assert published.extensions == {"site": "north"} and published.dataschema == SCHEMA
    assert published.data.tenant == stack.tenant and published.source == "urn:pacs:bridge-7"


@pytest.mark.parametrize("mode", ["structured", "binary"])
async def test_sdk_event_over_nats_as_an_upstream_user_reaches_ready(
        stack: Stack, nats_users: NatsUsers, mode: str) -> None:
    creds = nats_users.add_upstream(stack.tenant)
    task_id = f"nats-{mode}-{uuid.uuid4().hex[:8]}"
    event = sdk_event(task_id, stack.dataset_id, traceparent=TRACE)
    message = (ce_http.to_structured_event(event) if mode == "structured"
               else ce_http.to_binary_event(event))
    nc = await creds.connect()
    try:  # JetStream publish: the stream's ack comes back on the user's own inbox
        ack = await nc.jetstream().publish(creds.subject, message.body,
                                           headers=dict(message.headers))
        assert ack.stream == "INBOUND"
    finally:
        await nc.close()
    await reached(stack, task_id)
    published = await requested(stack.js, task_id)
    assert published.extensions == {"site": "north"} and published.dataschema == SCHEMA
    assert published.data.tenant == stack.tenant and published.traceparent == TRACE


async def test_refusals_over_nats_are_dead_letters_of_the_tenant_and_touch_no_task(
        stack: Stack, nats_users: NatsUsers) -> None:
    """Another tenant's task id and a tenant named in data that is not the sender's:
    both refused into DLQ (``dlq.admission.<sender>``); the victim's task is unchanged."""
    victim_id = f"victim-{uuid.uuid4().hex[:8]}"
    message = ce_http.to_structured_event(sdk_event(victim_id, stack.dataset_id))
    resp = await stack.client.post("/v1/events", data=message.body,
                                   headers=signed(stack.secret, dict(message.headers),
                                                  message.body))
    assert resp.status == 202, await resp.text()
    await reached(stack, victim_id)

    thief = nats_users.add_upstream(f"th{uuid.uuid4().hex[:6]}")
    stolen = sdk_event(victim_id, stack.dataset_id, source="urn:thief")
    named = sdk_event(f"named-{uuid.uuid4().hex[:8]}", stack.dataset_id)
    named_body = json.loads(ce_http.to_structured_event(named).body)
    named_body["data"]["tenant"] = stack.tenant  # not the thief's tenant
    nc = await thief.connect()
    try:
        js = nc.jetstream()
        await js.publish(thief.subject, ce_http.to_structured_event(stolen).body)
        await js.publish(thief.subject, json.dumps(named_body).encode())
    finally:
        await nc.close()

    async def letters() -> list[Any] | None:
        found = await list_dead_letters(stack.js, "admission", thief.tenant)
        return found if len(found) == 2 else None

    found = await wait_for(letters, 30, "two admission dead letters")
    errors = sorted(letter.get("Radtrain-Dlq-Error") for letter in found)
    assert "task_id_unavailable" in errors[0] and stack.tenant not in errors[0], errors
    assert "tenant_mismatch" in errors[1], errors
    for letter in found:
        assert letter.subject == f"dlq.admission.{thief.tenant}"
        assert letter.get(H_TASK) == "" and letter.get(H_TENANT) == thief.tenant
    counts = await subject_counts(stack.js, f"tasks.*.{victim_id}")
    assert counts == {f"tasks.requested.{victim_id}": 1, f"tasks.ready.{victim_id}": 1}
    assert (await requested(stack.js, victim_id)).source == "urn:pacs:bridge-7"
    assert await list_dead_letters(stack.js, None, victim_id) == []
