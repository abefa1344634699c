"""CloudEvents as the official SDK builds them: structured and binary, with extensions."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest
from cloudevents.core.bindings.http import to_binary_event, to_structured_event
from cloudevents.core.v1.event import CloudEvent
from pydantic import ValidationError

from schemas.cloudevents import CloudEventFormatError, event_bytes, event_dict, is_binary
from schemas.events import (
    TaskCancelRequestedEvent,
    TaskReadyEvent,
    TaskRedriven,
    TaskRedrivenEvent,
    parse_event,
)

CANCEL = "radtrain.task.cancel_requested.v1"


def sdk_event(**extra: object) -> CloudEvent:
    attributes = {"type": CANCEL, "source": "urn:pacs-bridge", "id": "e-1",
                  "partitionkey": "ward-7", "dataschema": "https://example.org/cancel.json",
                  "datacontenttype": "application/json", **extra}
    return CloudEvent(attributes=attributes, data={"task_id": "t1", "by": "pacs", "reason": "é"})


def test_structured_sdk_event_parses_with_extension_and_dataschema() -> None:
    msg = to_structured_event(sdk_event())
    event = parse_event(event_bytes(msg.headers, msg.body))
    assert isinstance(event, TaskCancelRequestedEvent)
    assert event.subject == "t1"  # CloudEvents subject is optional: taken from data.task_id
    assert event.dataschema == "https://example.org/cancel.json"
    assert event.extensions == {"partitionkey": "ward-7"}
    assert event.data.reason == "é"


def test_binary_sdk_event_parses_like_the_structured_one() -> None:
    sent = sdk_event(subject="t1", time=datetime(2026, 12, 3, 10, tzinfo=UTC))
    msg = to_binary_event(sent)
    assert is_binary(msg.headers)
    event = parse_event(event_bytes(msg.headers, msg.body))
    structured = parse_event(event_bytes(*_structured(sent)))
    assert event == structured
    assert event.extensions == {"partitionkey": "ward-7"}


def _structured(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    msg = to_structured_event(event)
    return dict(msg.headers), msg.body


def test_binary_headers_are_case_insensitive_and_percent_decoded() -> None:
    headers = {"CE-SpecVersion": "1.0", "Ce-Type": CANCEL, "ce-source": "a%20b",
               "ce-id": "1", "Content-Type": "application/json; charset=utf-8",
               "ce-taskgeneration": "3"}
    event = parse_event(event_bytes(headers, b'{"task_id": "t9", "by": "x"}'))
    assert event.source == "a b" and event.subject == "t9" and event.taskgeneration == 3
    assert event.msg_id == "t9:cancel_requested:g3"


@pytest.mark.parametrize("headers, body, fragment", [
    ({}, b"not json", "body is not JSON"),
    ({}, b"[1]", "JSON object"),
    ({"ce-specversion": "1.0", "ce-data": "x"}, b"{}", "ce-data"),
    ({"ce-specversion": "1.0", "content-type": "text/plain"}, b"hi", "must be JSON"),
    ({"ce-specversion": "1.0"}, b"{oops", "data (the body) is not JSON"),
    ({"content-type": "application/cloudevents-batch+json"}, b"[]", "batched"),
])
def test_bad_messages_name_what_is_wrong(headers: dict[str, str], body: bytes,
                                         fragment: str) -> None:
    with pytest.raises(CloudEventFormatError, match=re.escape(fragment)):
        event_dict(headers, body)


@pytest.mark.parametrize("attrs, fragment", [
    ({"Bad-Name": "x"}, "extension names"),
    ({"waytoolongextensionname": "x"}, "extension names"),
    ({"nested": {"a": 1}}, "string, integer or boolean"),
    ({"ratio": 0.5}, "string, integer or boolean"),
    ({"datacontenttype": "application/xml"}, "data must be JSON"),
])
def test_bad_attributes_are_refused_naming_them(attrs: dict[str, object], fragment: str) -> None:
    raw = {"specversion": "1.0", "id": "1", "source": "s", "type": CANCEL,
           "data": {"task_id": "t1", "by": "x"}, **attrs}
    with pytest.raises(ValidationError, match=fragment):
        parse_event(json.dumps(raw))


def test_unknown_typed_fields_inside_data_stay_errors() -> None:
    raw = {"specversion": "1.0", "id": "1", "source": "s", "type": CANCEL,
           "data": {"task_id": "t1", "by": "x", "bye": "typo"}}
    with pytest.raises(ValidationError, match="bye"):
        parse_event(json.dumps(raw))


def test_carry_keeps_extensions_and_generation_on_follow_up_events() -> None:
    first = parse_event(json.dumps({"specversion": "1.0", "id": "1", "source": "s",
                                    "type": CANCEL, "taskgeneration": 2, "ward": "7",
                                    "data": {"task_id": "t1", "by": "x"}}))
    follow = TaskRedrivenEvent(source="radtrain/test", subject="t1", **first.carry(),
                               data=TaskRedriven(task_id="t1", by="oncall", to_state="ready"))
    assert follow.extensions == {"ward": "7"} and follow.taskgeneration == 2
    again = parse_event(follow.model_dump_json())
    assert again == follow
    assert follow.msg_id == "t1:redriven:g2"


def test_first_generation_keeps_todays_message_ids() -> None:
    assert TaskReadyEvent.model_fields["taskgeneration"].default == 1
    event = parse_event(json.dumps({"specversion": "1.0", "id": "1", "source": "s",
                                    "type": CANCEL, "data": {"task_id": "t1", "by": "x"}}))
    assert event.msg_id == "t1:cancel_requested"
