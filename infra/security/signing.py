"""Standard Webhooks signatures (https://www.standardwebhooks.com), both directions.

Signed content is ``{webhook-id}.{webhook-timestamp}.{body}``, HMAC-SHA256
with the base64-decoded part of a ``whsec_`` secret; the header is
``v1,<base64 signature>``, several separated by spaces while a secret is
being rotated. Written with hmac rather than the ``standardwebhooks``
package so that verification can tell *why* it failed and never raises on
a malformed header; the tests check interoperability with that package.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping

SECRET_PREFIX = "whsec_"


class SignatureError(Exception):
    """Why an incoming request is not authentic: bad headers, stale, or no match."""


def new_secret(nbytes: int = 32) -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(nbytes)).decode()


def secret_bytes(secret: str) -> bytes:
    raw = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(raw + "==", validate=False)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("webhook secret is not base64") from exc
    if not key:
        raise ValueError("webhook secret is empty")
    return key


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64>`` signature."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def sign_headers(secrets_: Iterable[str], msg_id: str, timestamp: int,
                 body: bytes) -> dict[str, str]:
    """The three headers of one delivery; one signature per active secret."""
    sigs = [signature(s, msg_id, timestamp, body) for s in secrets_]
    if not sigs:
        raise ValueError("at least one secret is needed to sign")
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": " ".join(sigs)}


def verify(secrets_: Iterable[str], headers: Mapping[str, str], body: bytes, *,
           now: float, tolerance_s: float) -> tuple[str, int]:
    """Check an incoming request; returns ``(webhook-id, timestamp)`` or raises SignatureError.

    The signature is checked before the timestamp so that an attacker learns
    nothing about timing from a forged request; both must hold.
    """
    msg_id = headers.get("webhook-id", "")
    raw_ts = headers.get("webhook-timestamp", "")
    raw_sig = headers.get("webhook-signature", "")
    if not (msg_id and raw_ts and raw_sig) or len(msg_id) > 256:
        raise SignatureError("missing or malformed webhook-id/timestamp/signature headers")
    try:
        timestamp = int(raw_ts)
    except ValueError:
        raise SignatureError("webhook-timestamp is not an integer") from None
    given = [part.split(",", 1)[1] for part in raw_sig.split()
             if part.startswith("v1,")]
    expected = [signature(s, msg_id, timestamp, body).split(",", 1)[1] for s in secrets_]
    if not any(hmac.compare_digest(g.encode(), e.encode()) for g in given for e in expected):
        raise SignatureError("no matching signature")
    if abs(now - timestamp) > tolerance_s:
        raise SignatureError(f"webhook-timestamp outside {tolerance_s:.0f}s of now")
    return msg_id, timestamp
