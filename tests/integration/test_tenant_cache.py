"""A tenant's cached list follows the bucket's changes (a real nats-server)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest
from nats.js.kv import KeyValue

from infra.kv.tenant_cache import TenantCache

pytestmark = pytest.mark.integration


@pytest.fixture
async def bucket(nats_server: str) -> AsyncIterator[KeyValue]:
    nc = await nats.connect(nats_server)
    js = nc.jetstream()
    name = f"cache_{uuid.uuid4().hex[:12]}"
    try:
        yield await js.create_key_value(bucket=name, history=1)
    finally:
        await js.delete_key_value(name)
        await nc.close()


async def _until(predicate: Any, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_a_change_under_a_tenant_reloads_only_that_tenant(bucket: KeyValue) -> None:
    kv = bucket
    cache: TenantCache[int] = TenantCache(kv, max_age_s=300)
    loads = {"acme": 0, "zeta": 0}

    def loader(tenant: str) -> Any:
        async def load() -> int:
            loads[tenant] += 1
            return loads[tenant]
        return load

    try:
        assert await cache.get("acme", loader("acme")) == 1
        await _until(lambda: cache._watching)
        assert await cache.get("zeta", loader("zeta")) == 1
        for _ in range(20):  # served from memory: no scan per event
            assert await cache.get("acme", loader("acme")) == 1
        await kv.put("acme.w1", b"{}")
        await _until(lambda: "acme" not in cache._entries)
        assert await cache.get("acme", loader("acme")) == 2
        assert await cache.get("zeta", loader("zeta")) == 1  # untouched tenant: still cached
        await kv.delete("acme.w1")
        await _until(lambda: "acme" not in cache._entries)
        assert await cache.get("acme", loader("acme")) == 3
    finally:
        await cache.close()


async def test_without_its_watch_a_list_is_kept_at_most_max_age(bucket: KeyValue) -> None:
    kv = bucket
    cache: TenantCache[int] = TenantCache(kv, max_age_s=0.2)
    calls = 0

    async def load() -> int:
        nonlocal calls
        calls += 1
        return calls

    cache._ensure_watch = lambda: None  # type: ignore[method-assign]  # the watch is down
    assert await cache.get("acme", load) == 1
    assert await cache.get("acme", load) == 1
    await asyncio.sleep(0.25)
    assert await cache.get("acme", load) == 2
