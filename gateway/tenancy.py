"""API keys (KV ``apikeys``), tenants' inbound secrets (KV ``tenants``), replay ids.

A key reads ``rt_<16 hex id>_<43 char secret>``. Only ``sha256(key)`` is
stored, under the id, so authentication is one KV ``get`` plus a constant-time
compare, and a leaked bucket reveals no usable key. sha256 rather than a
password hash: the secret has 256 random bits, so there is nothing to
brute-force, and a slow hash would only slow every request down.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from infra.bus.topology import KV_APIKEYS, KV_INBOUND_IDS, KV_TENANTS
from infra.kv_scan import scan
from infra.security.signing import new_secret
from schemas.tenancy import ApiKeyRecord, SigningSecret, TenantSecrets

KEY_RE = re.compile(r"^rt_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")


def _now() -> datetime:
    return datetime.now(UTC)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str | None:
    match = KEY_RE.match(key)
    return match.group(1) if match else None


@dataclass(frozen=True)
class IssuedKey:
    record: ApiKeyRecord
    key: str
    """Shown once; only its hash is kept."""


class ApiKeyRepo:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext) -> ApiKeyRepo:
        return cls(await js.key_value(KV_APIKEYS))

    async def create(self, tenant: str, name: str = "") -> IssuedKey:
        key_id = secrets.token_hex(8)
        key = f"rt_{key_id}_{secrets.token_urlsafe(32)}"
        record = ApiKeyRecord(id=key_id, tenant=tenant, name=name, sha256=hash_key(key),
                              created_at=_now())
        await self._kv.create(key_id, record.model_dump_json().encode())
        return IssuedKey(record=record, key=key)

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        try:
            entry = await self._kv.get(key_id)
        except KeyNotFoundError:
            return None
        return ApiKeyRecord.model_validate_json(entry.value) if entry.value else None

    async def authenticate(self, key: str) -> ApiKeyRecord | None:
        """The record of a valid, unrevoked key; ``None`` for anything else."""
        key_id = key_id_of(key)
        record = await self.get(key_id) if key_id else None
        if record is None or record.revoked_at is not None:
            return None
        if not hmac.compare_digest(record.sha256, hash_key(key)):
            return None
        return record

    async def list(self, tenant: str | None = None) -> list[ApiKeyRecord]:
        records = [ApiKeyRecord.model_validate_json(v) for v in (await scan(self._kv)).values()]
        return sorted((r for r in records if tenant is None or r.tenant == tenant),
                      key=lambda r: r.created_at)

    async def revoke(self, key_id: str) -> ApiKeyRecord | None:
        """Mark revoked (kept for audit); ``None`` if there is no such key."""
        if not re.fullmatch(r"[0-9a-f]{16}", key_id):
            return None
        try:
            entry = await self._kv.get(key_id)
        except KeyNotFoundError:
            return None
        record = ApiKeyRecord.model_validate_json(entry.value or b"")
        if record.revoked_at is None:
            record = record.model_copy(update={"revoked_at": _now()})
            await self._kv.update(key_id, record.model_dump_json().encode(),
                                  last=entry.revision)
        return record


class TenantRepo:
    """Per-tenant secrets that upstream systems sign incoming events with."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext) -> TenantRepo:
        return cls(await js.key_value(KV_TENANTS))

    async def get(self, tenant: str) -> tuple[TenantSecrets, int]:
        try:
            entry = await self._kv.get(tenant)
        except KeyNotFoundError:
            return TenantSecrets(tenant=tenant), 0
        return TenantSecrets.model_validate_json(entry.value or b""), entry.revision or 0

    async def inbound_secrets(self, tenant: str, now: datetime | None = None) -> list[str]:
        """Secrets valid now: the newest and, during a rotation, the previous one."""
        now = now or _now()
        current, _ = await self.get(tenant)
        return [s.secret for s in current.inbound if s.expires_at is None or s.expires_at > now]

    async def rotate_inbound(self, tenant: str, overlap_s: float) -> str:
        """Add a new secret; the older ones stay valid ``overlap_s`` more (0: at once)."""
        for _ in range(10):
            current, revision = await self.get(tenant)
            now = _now()
            until = now + timedelta(seconds=overlap_s)
            kept = [s if s.expires_at is not None and s.expires_at <= until
                    else s.model_copy(update={"expires_at": until})
                    for s in current.inbound if s.expires_at is None or s.expires_at > now]
            secret = new_secret()
            new = TenantSecrets(tenant=tenant, inbound=[
                SigningSecret(secret=secret, created_at=now), *kept])
            data = new.model_dump_json().encode()
            try:
                if revision:
                    await self._kv.update(tenant, data, last=revision)
                else:
                    await self._kv.create(tenant, data)
                return secret
            except KeyWrongLastSequenceError:
                continue
        raise RuntimeError(f"tenant {tenant}: too many concurrent rotations")


class ReplayGuard:
    """Remembers incoming ``webhook-id`` values (KV with a TTL of twice the tolerance)."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext) -> ReplayGuard:
        return cls(await js.key_value(KV_INBOUND_IDS))

    @staticmethod
    def _key(tenant: str, msg_id: str) -> str:
        return f"{tenant}.{hashlib.sha256(msg_id.encode()).hexdigest()[:40]}"

    async def first_time(self, tenant: str, msg_id: str) -> bool:
        """Atomically record the id; False if it was seen (a replay)."""
        try:
            await self._kv.create(self._key(tenant, msg_id), b"1")
        except KeyWrongLastSequenceError:
            return False
        return True

    async def forget(self, tenant: str, msg_id: str) -> None:
        """Undo :meth:`first_time` when the event could not be published: let a retry in."""
        await self._kv.purge(self._key(tenant, msg_id))
