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
