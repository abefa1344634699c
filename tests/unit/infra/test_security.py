"""Webhook signatures (checked against the ``standardwebhooks`` package) and the
outbound address policy: infra/security, pure logic."""

from __future__ import annotations

import base64
import ipaddress
import json
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook

from infra.security.address_guard import BlockedAddress, check_url, is_public
from infra.security.signing import SignatureError, new_secret, sign_headers, verify

BODY = b'{"type":"radtrain.task.completed.v1","data":{"task_id":"t1"}}'


def test_our_signature_verifies_with_standardwebhooks() -> None:
    secret = new_secret()
    headers = sign_headers([secret], "msg_1", int(time.time()), BODY)
    assert Webhook(secret).verify(BODY, headers) == json.loads(BODY)


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
