"""Tenants, API keys and signing secrets: what KV ``apikeys`` and ``tenants`` hold."""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import Field

from schemas.common import Identifier, Strict


class ApiKeyRecord(Strict):
    """One API key, stored by its id; the key itself is never stored, only its sha256.

    A key is ``rt_<id>_<secret>``: the id makes the lookup one KV ``get``, and
    the 256-bit secret makes a fast hash safe (nobody brute-forces 2**256),
    where a password would need a slow one.
    """

    id: str = Field(pattern=r"^[0-9a-f]{16}$")
    tenant: Identifier
    name: str = Field("", max_length=200)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    created_at: datetime
    revoked_at: datetime | None = None


class SigningSecret(Strict):
    """A Standard Webhooks secret (``whsec_<base64>``); kept in clear, HMAC needs it.

    ``expires_at`` is set on the previous secret at a rotation: until then both
    sign (outgoing) or verify (incoming), so receivers can switch without a gap.
    """

    secret: str = Field(pattern=r"^whsec_[A-Za-z0-9+/=]{16,200}$")
    created_at: datetime
    expires_at: datetime | None = None


class TenantSecrets(Strict):
    """Per-tenant secrets for signed incoming events (``POST /v1/events``)."""

    tenant: Identifier
    inbound: list[SigningSecret] = Field(default_factory=list)


class SeenEvent(Strict):
    """What KV ``inbound_ids`` holds under ``<tenant>.<hash of webhook-id>``: an incoming
    event already accepted, remembered for the replay window (the bucket's TTL)."""

    seen_at: datetime


def live_secrets(secrets: list[SigningSecret], now: datetime) -> list[str]:
    """The secrets valid at ``now``: the newest and, during a rotation, the older ones."""
    return [s.secret for s in secrets if s.expires_at is None or s.expires_at > now]


def rotate_secrets(secrets: list[SigningSecret], new: str, now: datetime,
                   overlap_s: float) -> list[SigningSecret]:
    """``new`` first; the still-valid older ones expire ``overlap_s`` from ``now`` at the
    latest (0: at once), expired ones are dropped."""
    until = now + timedelta(seconds=overlap_s)
    kept = [s if s.expires_at is not None and s.expires_at <= until
            else s.model_copy(update={"expires_at": until})
            for s in secrets if s.expires_at is None or s.expires_at > now]
    return [SigningSecret(secret=new, created_at=now), *kept]
