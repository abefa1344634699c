"""Per-tenant results of a bucket scan, kept until the bucket changes under the tenant.

The webhook deliverer looks up a tenant's subscriptions for every status event.
A scan is a server-side ordered consumer (created, read, deleted): at hundreds of
events a second that is hundreds of consumers a second, which costs the server
more than the events themselves and, in a burst, hits the account's consumer
limit (NATS error 10026). One long-lived watch on the bucket's keys tells which
tenant changed, so a tenant's list is read again only after a change.

If the watch stops (NATS restart, a slow consumer), cached lists are dropped and
each is kept at most ``max_age_s`` until the watch is back: stale for a bounded
time, never for good.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import nats.errors
from nats.js.kv import KeyValue

log = logging.getLogger(__name__)

V = TypeVar("V")


class TenantCache(Generic[V]):
    """``get(tenant, load)``: ``load()``'s result, cached until a key ``<tenant>.*`` of the
    watched bucket changes (or ``max_age_s`` passes)."""

    def __init__(self, kv: KeyValue, *, max_age_s: float = 5.0) -> None:
        self._kv = kv
        self.max_age_s = max_age_s
        self._entries: dict[str, tuple[float, V]] = {}
        self._epoch: dict[str, int] = {}
        self._watching = False
        self._task: asyncio.Task[None] | None = None

    async def get(self, tenant: str, load: Callable[[], Awaitable[V]]) -> V:
        self._ensure_watch()
        now = time.monotonic()
        hit = self._entries.get(tenant)
        if hit is not None and (self._watching or now - hit[0] < self.max_age_s):
            return hit[1]
        epoch = self._epoch.get(tenant, 0)
        value = await load()
        if self._epoch.get(tenant, 0) == epoch:  # no change arrived while loading
            self._entries[tenant] = (now, value)
        return value

    def invalidate(self, key: str) -> None:
        tenant = key.split(".", 1)[0]
        self._entries.pop(tenant, None)
        self._epoch[tenant] = self._epoch.get(tenant, 0) + 1

    def _ensure_watch(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        """Follow the bucket's changes; on any failure fall back to ``max_age_s``."""
        try:
            watcher = await self._kv.watch(">", meta_only=True, include_history=False)
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("KV watch for cached lists not started: %s", type(exc).__name__)
            await asyncio.sleep(self.max_age_s)
            return
        initial = True
        try:
            while True:
                try:
                    entry = await watcher.updates(timeout=None)  # type: ignore[arg-type]
                except nats.errors.TimeoutError:
                    continue
                if entry is None:  # every key present at start was sent: now live
                    initial, self._watching = False, True
                    continue
                if not initial:
                    self.invalidate(entry.key)
        except (nats.errors.Error, TimeoutError, ConnectionError) as exc:
            log.warning("KV watch for cached lists stopped: %s", type(exc).__name__)
        finally:
            self._watching = False
            self._entries.clear()  # what was cached may have changed unseen
            try:
                await watcher.stop()
            except (nats.errors.Error, TimeoutError):
                pass

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # closing anyway
                pass
