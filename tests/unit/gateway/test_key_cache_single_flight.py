"""A burst of requests on a key the gateway has not looked up yet reads KV once."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from gateway.auth import KeyCache
from gateway.tenancy import ApiKeyRepo
from schemas.tenancy import ApiKeyRecord


class SlowRepo:
    def __init__(self, record: ApiKeyRecord | None, fail: BaseException | None = None) -> None:
        self.record, self.fail, self.calls = record, fail, 0
        self.gate = asyncio.Event()

    async def authenticate(self, token: str) -> ApiKeyRecord | None:
        self.calls += 1
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return self.record


def _record() -> Any:
    return ApiKeyRecord.model_construct(id="k1", tenant="acme")


async def test_concurrent_misses_share_one_lookup() -> None:
    repo = SlowRepo(_record())
    keys = KeyCache(cast(ApiKeyRepo, repo), ttl_s=60)
    burst = [asyncio.create_task(keys.authenticate("tok")) for _ in range(64)]
    await asyncio.sleep(0)
    assert keys.looking_up("tok")
    repo.gate.set()
    records = await asyncio.gather(*burst)
    assert repo.calls == 1 and all(r is not None and r.tenant == "acme" for r in records)
    assert not keys.looking_up("tok") and keys.cached("tok") is not None


async def test_a_failed_lookup_fails_every_waiter_and_the_next_call_reads_again() -> None:
    repo = SlowRepo(_record(), fail=TimeoutError("kv"))
    keys = KeyCache(cast(ApiKeyRepo, repo), ttl_s=60)
    burst = [asyncio.create_task(keys.authenticate("tok")) for _ in range(5)]
    await asyncio.sleep(0)
    repo.gate.set()
    results = await asyncio.gather(*burst, return_exceptions=True)
    assert repo.calls == 1 and all(isinstance(r, TimeoutError) for r in results)
    repo.fail = None
    assert await keys.authenticate("tok") is not None and repo.calls == 2


async def test_a_waiter_reads_again_when_the_first_request_is_cancelled() -> None:
    repo = SlowRepo(_record())
    keys = KeyCache(cast(ApiKeyRepo, repo), ttl_s=60)
    leader = asyncio.create_task(keys.authenticate("tok"))
    await asyncio.sleep(0)
    follower = asyncio.create_task(keys.authenticate("tok"))
    await asyncio.sleep(0)
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    repo.gate.set()
    assert (await follower) is not None and repo.calls == 2
