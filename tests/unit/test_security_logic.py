"""Pure logic of issue 8: signatures (checked against the ``standardwebhooks`` package),
address policy, retry schedule, rate limiting, trace context, JSON logs, key format."""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import time
from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from gateway.ratelimit import RateLimiter, retry_after_header
from gateway.tenancy import KEY_RE, hash_key, key_id_of
from handlers.webhooks import (
    RetryPolicy,
    delivery_id,
    is_success,
    request_headers,
    webhook_event_type,
)
from infra.security.address_guard import BlockedAddress, check_url, is_public
from infra.security.signing import SignatureError, new_secret, sign_headers, verify
from infra.telemetry.logging import ContextFilter, JsonFormatter, log_context
from infra.telemetry.tracing import new_traceparent, parse_traceparent, trace_id_of

BODY = b'{"type":"radtrain.task.completed.v1","data":{"task_id":"t1"}}'


def test_our_signature_verifies_with_standardwebhooks() -> None:
    secret = new_secret()
    headers = sign_headers([secret], "msg_1", int(time.time()), BODY)
    assert Webhook(secret).verify(BODY, headers) == json.loads(BODY)


def test_rotation_sends_one_signature_per_secret_and_each_verifies() -> None:
    old, new = new_secret(), new_secret()
    headers = request_headers([new, old], "msg_2", int(time.time()), BODY, None)
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        Webhook(secret).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(BODY, headers)


def test_we_verify_what_standardwebhooks_signs() -> None:
    secret = new_secret()
    now = int(time.time())
    sig = Webhook(secret).sign("msg_3", datetime.fromtimestamp(now, UTC), BODY.decode())
    headers = {"webhook-id": "msg_3", "webhook-timestamp": str(now), "webhook-signature": sig}
    assert verify([secret], headers, BODY, now=now, tolerance_s=300) == ("msg_3", now)


@pytest.mark.parametrize("mutate", [
    lambda h: {**h, "webhook-signature": "v1," + base64.b64encode(b"x" * 32).decode()},
    lambda h: {**h, "webhook-signature": "garbage-without-comma"},
    lambda h: {**h, "webhook-id": "other"},
    lambda h: {k: v for k, v in h.items() if k != "webhook-timestamp"},
    lambda h: {**h, "webhook-timestamp": "soon"},
])
def test_bad_signatures_are_refused(mutate) -> None:  # type: ignore[no-untyped-def]
    secret, now = new_secret(), int(time.time())
    headers = sign_headers([secret], "msg_4", now, BODY)
    with pytest.raises(SignatureError):
        verify([secret], mutate(headers), BODY, now=now, tolerance_s=300)
    with pytest.raises(SignatureError):
        verify([secret], headers, BODY + b" ", now=now, tolerance_s=300)


def test_timestamp_outside_tolerance_is_refused_both_ways() -> None:
    secret, now = new_secret(), int(time.time())
    for skew in (-301, 301):
        headers = sign_headers([secret], "msg_5", now + skew, BODY)
        with pytest.raises(SignatureError, match="outside"):
            verify([secret], headers, BODY, now=now, tolerance_s=300)


@pytest.mark.parametrize("addr", ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1",
                                  "169.254.169.254", "0.0.0.0", "224.0.0.1", "100.64.0.1",
                                  "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "::"])
def test_non_public_addresses_are_blocked(addr: str) -> None:
    assert not is_public(ipaddress.ip_address(addr))
    with pytest.raises(BlockedAddress):
        check_url(f"http://{'[' + addr + ']' if ':' in addr else addr}:8080/hook", False)
    check_url(f"http://{'[' + addr + ']' if ':' in addr else addr}/hook", True)


def test_public_addresses_and_names_pass_the_literal_check() -> None:
    assert is_public(ipaddress.ip_address("8.8.8.8"))
    check_url("https://8.8.8.8/hook", False)
    check_url("https://hooks.example.com/x", False)  # names are checked when resolved
    with pytest.raises(BlockedAddress):
        check_url("ftp://example.com/", False)


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


def test_rate_limiter_bursts_then_waits() -> None:
    now = [0.0]
    limiter = RateLimiter(rate_per_s=2.0, burst=3, clock=lambda: now[0])
    assert [limiter.take("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.take("k")
    assert wait == pytest.approx(0.5) and retry_after_header(wait) == "1"
    assert limiter.take("other") == 0.0  # per key
    now[0] += 0.5
    assert limiter.take("k") == 0.0


def test_traceparent_parse_create_child() -> None:
    tp = new_traceparent()
    parsed = parse_traceparent(str(tp))
    assert parsed == tp and trace_id_of(str(tp)) == tp.trace_id
    child = tp.child()
    assert child.trace_id == tp.trace_id and child.span_id != tp.span_id
    for bad in (None, "", "00-xyz", "00-" + "0" * 32 + "-" + "1" * 16 + "-01",
                "ff-" + "a" * 32 + "-" + "b" * 16 + "-01"):
        assert parse_traceparent(bad) is None


def test_json_log_lines_carry_task_and_trace_ids() -> None:
    tp = new_traceparent()
    record = logging.LogRecord("radtrain.x", logging.INFO, __file__, 1, "hello %s", ("w",), None)
    with log_context(task_id="t42", traceparent=str(tp)):
        ContextFilter("handlers").filter(record)
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "hello w" and line["service"] == "handlers"
    assert line["task_id"] == "t42" and line["trace_id"] == tp.trace_id


def test_key_format_and_hash() -> None:
    key = "rt_0123456789abcdef_" + "A" * 43
    assert KEY_RE.match(key) and key_id_of(key) == "0123456789abcdef"
    assert key_id_of("rt_short_x") is None
    assert len(hash_key(key)) == 64 and hash_key(key) != hash_key(key + "x")
