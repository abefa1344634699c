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
from datetime import UTC, datetime

from infra.bus.topology import KV_APIKEYS, KV_INBOUND_IDS, KV_TENANTS
from infra.errors import KVConflict
from infra.kv import Bucket, BucketRepo
from infra.security.signing import new_secret
from schemas.tenancy import (
    ApiKeyRecord,
    SeenEvent,
    TenantSecrets,
    live_secrets,
    rotate_secrets,
)

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


class ApiKeyRepo(BucketRepo[ApiKeyRecord]):
    """KV ``apikeys``: key id → ApiKeyRecord (the key's sha256, never the key)."""

    BUCKET = Bucket(KV_APIKEYS, ApiKeyRecord, sealed=True)

    async def create(self, tenant: str, name: str = "") -> IssuedKey:
        for _ in range(3):  # a 64-bit id collides practically never
            key_id = secrets.token_hex(8)
            key = f"rt_{key_id}_{secrets.token_urlsafe(32)}"
            record = ApiKeyRecord(id=key_id, tenant=tenant, name=name, sha256=hash_key(key),
                                  created_at=_now())
            if await self.kv.create(key_id, record) is not None:
                return IssuedKey(record=record, key=key)
        raise KVConflict(self.kv.bucket, key_id, 3)

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        return await self.kv.get(key_id)

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
        records = (await self.kv.scan()).values()
        return sorted((r for r in records if tenant is None or r.tenant == tenant),
                      key=lambda r: r.created_at)

    async def revoke(self, key_id: str) -> ApiKeyRecord | None:
        """Mark revoked (kept for audit); ``None`` if there is no such key."""
        if not re.fullmatch(r"[0-9a-f]{16}", key_id):
            return None

        def mark(record: ApiKeyRecord | None) -> ApiKeyRecord | None:
            if record is None or record.revoked_at is not None:
                return None  # nothing to write
            return record.model_copy(update={"revoked_at": _now()})

        return await self.kv.update(key_id, mark) or await self.get(key_id)


class TenantRepo(BucketRepo[TenantSecrets]):
    """KV ``tenants``: per-tenant secrets that upstream systems sign incoming events with."""

    BUCKET = Bucket(KV_TENANTS, TenantSecrets, sealed=True)

    async def get(self, tenant: str) -> tuple[TenantSecrets, int]:
        return await self.kv.get_entry(tenant) or (TenantSecrets(tenant=tenant), 0)

    async def inbound_secrets(self, tenant: str, now: datetime | None = None) -> list[str]:
        """Secrets valid now: the newest and, during a rotation, the previous one."""
        current, _ = await self.get(tenant)
        return live_secrets(current.inbound, now or _now())

    async def rotate_inbound(self, tenant: str, overlap_s: float) -> str:
        """Add a new secret; the older ones stay valid ``overlap_s`` more (0: at once)."""
        secret = new_secret()

        def add(current: TenantSecrets | None) -> TenantSecrets:
            inbound = current.inbound if current else []
            return TenantSecrets(tenant=tenant,
                                 inbound=rotate_secrets(inbound, secret, _now(), overlap_s))

        await self.kv.update(tenant, add, attempts=10)
        return secret


class ReplayGuard(BucketRepo[SeenEvent]):
    """KV ``inbound_ids``: incoming ``webhook-id`` values, kept twice the tolerance (TTL)."""

    BUCKET = Bucket(KV_INBOUND_IDS, SeenEvent)

    @staticmethod
    def _key(tenant: str, msg_id: str) -> str:
        return f"{tenant}.{hashlib.sha256(msg_id.encode()).hexdigest()[:40]}"

    async def first_time(self, tenant: str, msg_id: str) -> bool:
        """Atomically record the id; False if it was seen (a replay)."""
        created = await self.kv.create(self._key(tenant, msg_id), SeenEvent(seen_at=_now()))
        return created is not None

    async def forget(self, tenant: str, msg_id: str) -> None:
        """Undo :meth:`first_time` when the event could not be published: let a retry in."""
        await self.kv.purge(self._key(tenant, msg_id))
