"""Webhook delivery logic (handlers/webhooks.py): signature rotation, retry schedule,
event types, delivery ids, success codes. Pure, no I/O."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from handlers.webhooks import (
    RetryPolicy,
    delivery_id,
    is_success,
    request_headers,
    webhook_event_type,
)
from infra.security.signing import new_secret

BODY = b'{"type":"radtrain.task.completed.v1","data":{"task_id":"t1"}}'


def test_rotation_sends_one_signature_per_secret_and_each_verifies() -> None:
    old, new = new_secret(), new_secret()
    headers = request_headers([new, old], "msg_2", int(time.time()), BODY, None)
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        Webhook(secret).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(BODY, headers)


def test_retry_policy_is_exponential_capped_and_bounded_by_the_window() -> None:
    policy = RetryPolicy(base_s=5, max_delay_s=7200, window_s=86_400)
    assert [policy.delay(n) for n in range(1, 6)] == [5, 10, 20, 40, 80]
    assert policy.delay(30) == 7200
    schedule = policy.schedule()
    assert sum(schedule) <= 86_400 < sum(schedule) + 7200 and len(schedule) > 15
    first = datetime(2026, 1, 1, tzinfo=UTC)
    assert policy.next_delay(1, first, first) == 5
    assert policy.next_delay(20, first, first + timedelta(hours=23, minutes=59)) is None


def test_event_types_ids_and_success() -> None:
    assert webhook_event_type("radtrain.task.completed.v1") == "task.completed"
    assert webhook_event_type("radtrain.task.progress.v1") is None
    assert webhook_event_type("other.task.completed.v1") is None
    assert delivery_id("e1", "w1") == delivery_id("e1", "w1") != delivery_id("e1", "w2")
    assert is_success(204) and not is_success(302) and not is_success(500)


def test_the_body_is_sent_as_a_structured_cloudevent() -> None:
    """CloudEvents HTTP binding, structured mode: the official SDK reads an event as we
    publish it (no ``null`` attributes), extension attributes included."""
    from cloudevents.core.bindings.http import HTTPMessage, from_http_event

    from schemas.events import TaskCompleted, TaskCompletedEvent, encode_event

    body = encode_event(TaskCompletedEvent(
        source="radtrain/runner", subject="t1", ward="7",  # type: ignore[call-arg]
        data=TaskCompleted(task_id="t1", metrics={"auc": 0.9}, artifacts=[], duration_s=1.0)))
    headers = request_headers([new_secret()], "msg_1", int(time.time()), body, None)
    assert headers["content-type"] == "application/cloudevents+json"
    event = from_http_event(HTTPMessage(headers=headers, body=body))
    assert event.get_type() == "radtrain.task.completed.v1" and event.get_subject() == "t1"
    assert event.get_extension("ward") == "7" and event.get_extension("taskgeneration") == 1
    data = event.get_data()
    assert isinstance(data, dict) and data["metrics"] == {"auc": 0.9}
