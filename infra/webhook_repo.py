"""Webhook subscriptions (KV ``webhooks``) and delivery records (KV ``webhook_deliveries``).

Keys start with the tenant (``<tenant>.<webhook id>``,
``<tenant>.<webhook id>.<delivery id>``): a lookup under the caller's tenant
cannot find another tenant's object, and listing one tenant or one
subscription is a server-side subject filter. Deliveries are a KV bucket
with a TTL rather than a stream: each is one record updated in place
(compare-and-set) as attempts happen, read by id and listed per
subscription, and old ones expire by themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from infra.bus.topology import KV_DELIVERIES, KV_WEBHOOKS
from infra.kv_scan import scan
from infra.security.signing import new_secret
from schemas.tenancy import SigningSecret
from schemas.webhooks import Delivery, WebhookSubscription


class WebhookRepo:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext) -> WebhookRepo:
        return cls(await js.key_value(KV_WEBHOOKS))

    async def put(self, sub: WebhookSubscription) -> None:
        await self._kv.put(f"{sub.tenant}.{sub.id}", sub.model_dump_json().encode())

    async def _entry(self, tenant: str, webhook_id: str) -> tuple[WebhookSubscription, int] | None:
        try:
            entry = await self._kv.get(f"{tenant}.{webhook_id}")
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return WebhookSubscription.model_validate_json(entry.value), entry.revision or 0

    async def get(self, tenant: str, webhook_id: str) -> WebhookSubscription | None:
        found = await self._entry(tenant, webhook_id)
        return found[0] if found else None

    async def list(self, tenant: str) -> list[WebhookSubscription]:
        subs = [WebhookSubscription.model_validate_json(v)
                for v in (await scan(self._kv, f"{tenant}.*")).values()]
        return sorted(subs, key=lambda s: s.created_at)

    async def delete(self, tenant: str, webhook_id: str) -> bool:
        if await self._entry(tenant, webhook_id) is None:
            return False
        await self._kv.delete(f"{tenant}.{webhook_id}")
        return True

    async def rotate(self, tenant: str, webhook_id: str, overlap_s: float
                     ) -> tuple[WebhookSubscription, str] | None:
        """New secret first; older ones keep signing for ``overlap_s`` (several signatures)."""
        for _ in range(10):
            found = await self._entry(tenant, webhook_id)
            if found is None:
                return None
            sub, revision = found
            now = datetime.now(UTC)
            until = now + timedelta(seconds=overlap_s)
            kept = [s if s.expires_at is not None and s.expires_at <= until
                    else s.model_copy(update={"expires_at": until})
                    for s in sub.secrets if s.expires_at is None or s.expires_at > now]
            secret = new_secret()
            new = sub.model_copy(update={"secrets": [
                SigningSecret(secret=secret, created_at=now), *kept]})
            try:
                await self._kv.update(f"{tenant}.{webhook_id}", new.model_dump_json().encode(),
                                      last=revision)
            except KeyWrongLastSequenceError:
                continue
            return new, secret
        raise RuntimeError(f"webhook {webhook_id}: too many concurrent rotations")


def active_secrets(sub: WebhookSubscription, now: datetime) -> list[str]:
    return [s.secret for s in sub.secrets if s.expires_at is None or s.expires_at > now]


class DeliveryRepo:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext) -> DeliveryRepo:
        return cls(await js.key_value(KV_DELIVERIES))

    @staticmethod
    def _key(tenant: str, webhook_id: str, delivery_id: str) -> str:
        return f"{tenant}.{webhook_id}.{delivery_id}"

    async def get(self, tenant: str, webhook_id: str, delivery_id: str
                  ) -> tuple[Delivery, int] | None:
        try:
            entry = await self._kv.get(self._key(tenant, webhook_id, delivery_id))
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return Delivery.model_validate_json(entry.value), entry.revision or 0

    async def create(self, tenant: str, delivery: Delivery) -> bool:
        """False when it already exists (a redelivered event): the caller skips it."""
        try:
            await self._kv.create(self._key(tenant, delivery.webhook_id, delivery.id),
                                  delivery.model_dump_json().encode())
        except KeyWrongLastSequenceError:
            return False
        return True

    async def update(self, tenant: str, webhook_id: str, delivery_id: str,
                     change: Callable[[Delivery], Delivery]) -> Delivery | None:
        for _ in range(20):
            found = await self.get(tenant, webhook_id, delivery_id)
            if found is None:
                return None
            new = change(found[0])
            try:
                await self._kv.update(self._key(tenant, webhook_id, delivery_id),
                                      new.model_dump_json().encode(), last=found[1])
            except KeyWrongLastSequenceError:
                continue
            return new
        raise RuntimeError(f"delivery {delivery_id}: too many concurrent writers")

    async def list(self, tenant: str, webhook_id: str) -> list[Delivery]:
        found = await scan(self._kv, f"{tenant}.{webhook_id}.*")
        return sorted((Delivery.model_validate_json(v) for v in found.values()),
                      key=lambda d: d.created_at, reverse=True)
