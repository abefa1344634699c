"""The in-memory KeyValue (tests/support/fake_kv.py) and a real bucket agree.

One scenario of the generic repository, run against both, gives the same
transcript, revisions included (each bucket's stream starts at 1).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import nats
import pytest
from nats.js import JetStreamContext
from nats.js.kv import KeyValue
from pydantic import BaseModel

from infra.errors import KVConflict
from infra.kv import KVRepository
from tests.support.fake_kv import FakeKeyValue

pytestmark = pytest.mark.integration


class Counter(BaseModel):
    n: int = 0


def plus_one(c: Counter | None) -> Counter:
    return Counter(n=(c.n if c else 0) + 1)


class Raced:
    """Wraps a KeyValue: another writer slips in before each compare-and-set."""

    def __init__(self, kv: Any) -> None:
        self._kv = kv

    def __getattr__(self, name: str) -> Any:
        return getattr(self._kv, name)

    async def update(self, key: str, value: bytes, last: int | None = None) -> int:
        await self._kv.put(key, Counter(n=-1).model_dump_json().encode())
        return cast(int, await self._kv.update(key, value, last=last))


async def scenario(kv: Any) -> list[Any]:
    r = KVRepository(cast(KeyValue, kv), Counter, "parity")
    out: list[Any] = []
    out.append(await r.put("t1.a", Counter(n=1)))
    out.append(await r.create("t1.a", Counter(n=2)))
    out.append(await r.create("t1.b", Counter(n=3)))
    out.append(await r.get_entry("t1.a"))
    out.append(await r.compare_and_set("t1.a", Counter(n=9), 2))  # stale: b is at 2
    out.append(await r.compare_and_set("t1.a", Counter(n=4), 1))
    await asyncio.gather(*(r.update("t1.c", plus_one) for _ in range(20)))
    out.append(await r.get_entry("t1.c"))
    out.append(await r.update("t1.c", lambda c: None))
    out.append([await r.delete("t1.b"), await r.delete("t1.b"), await r.get("t1.b")])
    out.append(await r.create("t1.b", Counter(n=5)))  # over the delete marker
    await kv.put("t1.bad", b"{not json")
    await r.put("t2.a", Counter(n=6))
    await r.put("t1.a.deep", Counter(n=7))
    out.append(sorted((await r.scan("t1.*")).items()))
    out.append(sorted(await r.keys()))
    out.append(await r.scan("nobody.*"))
    await r.purge("t1.a")
    out.append([await r.get("t1.a"), sorted(await r.keys("t1.*"))])
    try:
        await KVRepository(cast(KeyValue, Raced(kv)), Counter, "parity").update(
            "t2.a", plus_one, attempts=3)
        out.append("no conflict")
    except KVConflict as exc:
        out.append(exc.code)
    out.append(await r.get_entry("t2.a"))
    return out


@pytest.fixture
async def js(nats_server: str) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(nats_server)
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


async def test_the_fake_and_a_real_bucket_agree(js: JetStreamContext) -> None:
    bucket = f"parity_{uuid.uuid4().hex[:12]}"
    real = await js.create_key_value(bucket=bucket, history=1)
    try:
        expected = await scenario(real)
    finally:
        await js.delete_key_value(bucket)
    assert expected[6] == (Counter(n=20), expected[6][1])  # sanity: no increment lost
    assert expected[-2] == "kv_conflict"
    assert await scenario(FakeKeyValue()) == expected
