"""The buckets more than one service reads: each one's model and key scheme.

- ``tasks``: task id → TaskRecord, written only by the projector (compare-and-set).
- ``datasets``: dataset id → DatasetSummary.
- ``runs``: task id → RunLedger, written only by runners (compare-and-set naming the
  attempt; runner/ownership.py).
- ``webhooks``: ``<tenant>.<webhook id>`` → WebhookSubscription.
- ``webhook_deliveries``: ``<tenant>.<webhook id>.<delivery id>`` → Delivery, a
  bucket with a TTL rather than a stream: each delivery is one record updated
  in place as attempts happen, read by id, listed per subscription, and old
  ones expire by themselves.

Tenant-scoped keys start with the tenant: a lookup under the caller's tenant
cannot find another tenant's object, and listing one tenant (or one
subscription) is a server-side subject filter.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Self

from nats.js import JetStreamContext

from infra.bus.topology import KV_DATASETS, KV_DELIVERIES, KV_RUNS, KV_TASKS, KV_WEBHOOKS
from infra.kv.listing import DATASETS, ListingIndex
from infra.kv.repository import Bucket, BucketRepo, KVRepository
from infra.kv.tenant_cache import TenantCache
from infra.security.signing import new_secret
from schemas.dataset import DatasetSummary
from schemas.record import TaskRecord
from schemas.runs import RunLedger
from schemas.tenancy import rotate_secrets
from schemas.webhooks import Delivery, WebhookSubscription


class TaskRepo(BucketRepo[TaskRecord]):
    BUCKET = Bucket(KV_TASKS, TaskRecord)

    async def get(self, task_id: str) -> tuple[TaskRecord, int] | None:
        return await self.kv.get_entry(task_id)

    async def ids(self) -> list[str]:
        return await self.kv.keys()

    async def upsert(
        self, task_id: str, change: Callable[[TaskRecord | None], TaskRecord | None],
        attempts: int = 20,
    ) -> TaskRecord | None:
        """Read, apply ``change``, write with CAS; re-read on a concurrent write."""
        return await self.kv.update(task_id, change, attempts=attempts)


class RunRepo(BucketRepo[RunLedger]):
    """Who owns each task's training: every write is a compare-and-set on the revision."""

    BUCKET = Bucket(KV_RUNS, RunLedger)

    async def get(self, task_id: str) -> tuple[RunLedger, int] | None:
        return await self.kv.get_entry(task_id)

    async def compare_and_set(self, ledger: RunLedger, revision: int) -> int | None:
        """Write if the key is still at ``revision`` (0: absent); ``None`` when another
        writer got there first (re-read and decide again)."""
        return await self.kv.compare_and_set(ledger.task_id, ledger, revision)

    async def transition(self, task_id: str, attempt: int, generation: int,
                         change: Callable[[RunLedger], RunLedger],
                         attempts: int = 10) -> RunLedger | None:
        """Apply ``change`` only while the record names ``attempt`` of ``generation`` as the
        running owner: the written record, or ``None`` when it no longer does (fenced)."""

        def guarded(current: RunLedger | None) -> RunLedger | None:
            if current is None or not current.names(attempt, generation):
                return None
            return change(current)

        return await self.kv.update(task_id, guarded, attempts=attempts)


class DatasetRepo(BucketRepo[DatasetSummary]):
    """Dataset id → summary; each tenant's datasets are also listed, newest first, in KV
    ``listings`` (infra/kv/listing.py), so a page costs O(limit) whatever their number."""

    BUCKET = Bucket(KV_DATASETS, DatasetSummary)

    def __init__(self, kv: KVRepository[DatasetSummary],
                 lists: ListingIndex | None = None) -> None:
        super().__init__(kv)
        self.lists = lists

    @classmethod
    async def open(cls, js: JetStreamContext, *, seal_key: bytes | None = None) -> Self:
        return cls(await cls.BUCKET.open(js, seal_key), await ListingIndex.open(js, DATASETS))

    async def get(self, dataset_id: str) -> DatasetSummary | None:
        return await self.kv.get(dataset_id)

    async def put(self, summary: DatasetSummary) -> None:
        if self.lists is not None:  # listed first (idempotent): a summary is never unlisted
            await self.lists.add(summary.tenant, summary.id)
        await self.kv.put(summary.id, summary)

    async def list(self, tenant: str | None = None) -> list[DatasetSummary]:
        """Every summary (of one tenant), read in one pass; a malformed entry is skipped."""
        return [s for s in (await self.kv.scan()).values()
                if tenant is None or s.tenant == tenant]


Subscriptions = list[WebhookSubscription]
"""(Inside :class:`WebhookRepo` the name ``list`` is its method.)"""


class WebhookRepo(BucketRepo[WebhookSubscription]):
    BUCKET = Bucket(KV_WEBHOOKS, WebhookSubscription, sealed=True)

    @staticmethod
    def key(tenant: str, webhook_id: str) -> str:
        return f"{tenant}.{webhook_id}"

    async def put(self, sub: WebhookSubscription) -> None:
        await self.kv.put(self.key(sub.tenant, sub.id), sub)

    async def get(self, tenant: str, webhook_id: str) -> WebhookSubscription | None:
        return await self.kv.get(self.key(tenant, webhook_id))

    cache: TenantCache[Subscriptions] | None = None
    """Set by :meth:`cached` where a tenant's list is read per event (the deliverer)."""

    def cached(self, max_age_s: float) -> Self:
        """Serve :meth:`list` from memory until the tenant's subscriptions change (a KV
        watch tells) or, while that watch is down, for at most ``max_age_s``."""
        self.cache = TenantCache(self.kv.raw, max_age_s=max_age_s)
        return self

    async def list(self, tenant: str) -> list[WebhookSubscription]:
        if self.cache is not None:
            return list(await self.cache.get(tenant, lambda: self._scan(tenant)))
        return await self._scan(tenant)

    async def _scan(self, tenant: str) -> Subscriptions:
        subs = await self.kv.scan(f"{tenant}.*")
        return sorted(subs.values(), key=lambda s: s.created_at)

    async def delete(self, tenant: str, webhook_id: str) -> bool:
        return await self.kv.delete(self.key(tenant, webhook_id))

    async def rotate(self, tenant: str, webhook_id: str, overlap_s: float
                     ) -> tuple[WebhookSubscription, str] | None:
        """New secret first; older ones keep signing for ``overlap_s`` (several signatures)."""
        secret = new_secret()

        def add(sub: WebhookSubscription | None) -> WebhookSubscription | None:
            if sub is None:
                return None
            return sub.model_copy(update={"secrets": rotate_secrets(
                sub.secrets, secret, datetime.now(UTC), overlap_s)})

        new = await self.kv.update(self.key(tenant, webhook_id), add, attempts=10)
        return (new, secret) if new is not None else None


class DeliveryRepo(BucketRepo[Delivery]):
    BUCKET = Bucket(KV_DELIVERIES, Delivery)

    @staticmethod
    def key(tenant: str, webhook_id: str, delivery_id: str) -> str:
        return f"{tenant}.{webhook_id}.{delivery_id}"

    async def get(self, tenant: str, webhook_id: str, delivery_id: str
                  ) -> tuple[Delivery, int] | None:
        return await self.kv.get_entry(self.key(tenant, webhook_id, delivery_id))

    async def create(self, tenant: str, delivery: Delivery) -> bool:
        """False when it already exists (a redelivered event): the caller skips it."""
        key = self.key(tenant, delivery.webhook_id, delivery.id)
        return await self.kv.create(key, delivery) is not None

    async def update(self, tenant: str, webhook_id: str, delivery_id: str,
                     change: Callable[[Delivery], Delivery]) -> Delivery | None:
        """``change`` applied by compare-and-set; ``None`` if there is no such delivery."""
        return await self.kv.update(self.key(tenant, webhook_id, delivery_id),
                                    lambda d: change(d) if d is not None else None)

    async def list(self, tenant: str, webhook_id: str) -> list[Delivery]:
        found = await self.kv.scan(f"{tenant}.{webhook_id}.*")
        return sorted(found.values(), key=lambda d: d.created_at, reverse=True)
