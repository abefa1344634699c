"""The generic KV repository against the in-memory KeyValue (tests/support/fake_kv.py)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from pydantic import BaseModel

from infra.errors import KVConflict, TransientError
from infra.kv import Bucket, BucketRepo, DeliveryRepo, KVRepository, TaskRepo
from infra.kv.repository import leader_reads
from schemas.webhooks import Delivery
from tests.support.fake_kv import FakeJetStream, FakeKeyValue, subject_matches


class Counter(BaseModel):
    n: int = 0
    by: str = ""


def repo(kv: FakeKeyValue | None = None) -> KVRepository[Counter]:
    return KVRepository(cast(KeyValue, kv or FakeKeyValue()), Counter, "counters")


def plus_one(c: Counter | None) -> Counter:
    return Counter(n=(c.n if c else 0) + 1)


async def test_get_put_create_delete_and_revisions() -> None:
    r = repo()
    assert await r.get("t1.a") is None and await r.get_entry("t1.a") is None
    rev = await r.put("t1.a", Counter(n=1))
    assert await r.get_entry("t1.a") == (Counter(n=1), rev)
    assert await r.create("t1.a", Counter(n=2)) is None  # exists: first writer won
    assert await r.compare_and_set("t1.a", Counter(n=3), rev + 5) is None  # stale revision
    rev2 = await r.compare_and_set("t1.a", Counter(n=3), rev)
    assert rev2 == rev + 1 and await r.get("t1.a") == Counter(n=3)
    assert await r.delete("t1.a") is True
    assert await r.delete("t1.a") is False and await r.get("t1.a") is None
    assert await r.create("t1.a", Counter(n=4)) is not None  # a deleted key can be created again
    await r.purge("t1.a")
    assert await r.get("t1.a") is None


async def test_create_is_first_writer_wins() -> None:
    r = repo()
    revisions = await asyncio.gather(*(r.create("t1.k", Counter(by=f"w{i}")) for i in range(10)))
    winners = [i for i, rev in enumerate(revisions) if rev is not None]
    assert len(winners) == 1
    assert await r.get("t1.k") == Counter(by=f"w{winners[0]}")


class BehindReplica(FakeKeyValue):
    """nats-py's ``create`` after a lost race reads the key to tell a deleted one; on an
    R3 bucket that read can reach a replica without the winner's write yet."""

    async def create(self, key: str, value: bytes, validate_keys: bool = True,
                     msg_ttl: float | None = None) -> int:
        if self._live(key) is not None:
            raise KeyNotFoundError
        return await super().create(key, value, validate_keys, msg_ttl)


async def test_a_lost_create_is_lost_even_when_the_read_after_it_finds_nothing() -> None:
    r = repo(BehindReplica())
    assert await r.create("t1.k", Counter(by="first")) is not None
    assert await r.create("t1.k", Counter(by="second")) is None
    assert await r.compare_and_set("t1.k", Counter(by="third"), 0) is None
    assert await r.get("t1.k") == Counter(by="first")


async def test_concurrent_updates_retry_and_never_lose_one() -> None:
    kv = FakeKeyValue()
    r = repo(kv)
    await asyncio.gather(*(r.update("t1.c", plus_one) for _ in range(20)))
    assert await r.get("t1.c") == Counter(n=20)
    assert kv.conflicts > 0  # the writers did collide, and every loser retried


async def test_update_that_changes_nothing_writes_nothing() -> None:
    r = repo()
    rev = await r.put("t1.c", Counter(n=1))
    assert await r.update("t1.c", lambda c: None) is None
    assert await r.get_entry("t1.c") == (Counter(n=1), rev)
    assert await r.update("t1.absent", lambda c: None) is None
    assert await r.get("t1.absent") is None


class AlwaysRaced(FakeKeyValue):
    """Another writer slips in before each compare-and-set."""

    async def update(self, key: str, value: bytes, last: int | None = None,
                     validate_keys: bool = True) -> int:
        await self.put(key, Counter(n=-1).model_dump_json().encode())
        return await super().update(key, value, last, validate_keys)


async def test_exhausted_attempts_raise_the_typed_transient_error() -> None:
    kv = AlwaysRaced()
    r = repo(kv)
    await r.put("t1.c", Counter())
    with pytest.raises(KVConflict) as caught:
        await r.update("t1.c", plus_one, attempts=5)
    assert isinstance(caught.value, TransientError) and caught.value.code == "kv_conflict"
    assert caught.value.bucket == "counters" and caught.value.key == "t1.c"
    assert kv.conflicts == 5


async def test_scan_filters_by_pattern_and_skips_malformed_values(
        caplog: pytest.LogCaptureFixture) -> None:
    kv = FakeKeyValue()
    r = repo(kv)
    for key, n in [("t1.a", 1), ("t1.b", 2), ("t2.a", 3), ("t1.a.x", 4), ("t10.a", 5)]:
        await r.put(key, Counter(n=n))
    await kv.put("t1.bad", b"not json")
    await r.put("t1.gone", Counter(n=6))
    await r.delete("t1.gone")
    await r.put("t1.b", Counter(n=7))  # only the latest value counts
    with caplog.at_level(logging.WARNING):
        found = await r.scan("t1.*")
    assert found == {"t1.a": Counter(n=1), "t1.b": Counter(n=7)}
    assert "t1.bad" in caplog.text
    assert set(await r.scan()) == {"t1.a", "t1.b", "t2.a", "t1.a.x", "t10.a"}
    assert await r.scan("t3.*") == {}
    assert sorted(await r.keys("t1.>")) == ["t1.a", "t1.a.x", "t1.b", "t1.bad"]
    assert await r.keys("nobody.*") == []


def test_subject_matching_of_the_fake() -> None:
    assert subject_matches("a.*", "a.b") and not subject_matches("a.*", "a.b.c")
    assert subject_matches("a.>", "a.b.c") and not subject_matches("a.>", "a")
    assert subject_matches(">", "a") and not subject_matches("a.b", "a.bb")


async def test_a_bucket_repo_opens_its_bucket_with_its_model() -> None:
    class Counters(BucketRepo[Counter]):
        BUCKET = Bucket("counters", Counter)

    js: Any = FakeJetStream("counters", "tasks")
    counters = await Counters.open(js)
    await counters.kv.put("x", Counter(n=1))
    assert counters.kv.model is Counter and counters.kv.bucket == "counters"
    assert await js.buckets["counters"].get("x")
    tasks = await TaskRepo.open(js)
    assert await tasks.get("nope") is None and await tasks.ids() == []


async def test_delivery_update_of_a_missing_delivery_is_none() -> None:
    js: Any = FakeJetStream("webhook_deliveries")
    deliveries = await DeliveryRepo.open(js)
    now = datetime.now(UTC)
    d = Delivery.model_validate({
        "id": "d1", "webhook_id": "w1", "event_id": "e1", "event_type": "task.completed",
        "task_id": "t", "created_at": now, "updated_at": now})
    assert await deliveries.create("ten", d) and not await deliveries.create("ten", d)
    done = await deliveries.update("ten", "w1", "d1",
                                   lambda x: x.model_copy(update={"state": "succeeded"}))
    assert done is not None and done.state == "succeeded"
    assert await deliveries.update("ten", "w1", "zz", lambda x: x) is None
    assert [x.id for x in await deliveries.list("ten", "w1")] == ["d1"]
    assert await deliveries.list("other", "w1") == []


def test_leader_reads_are_the_same_bucket_without_direct_gets() -> None:
    js: Any = object()
    kv = KeyValue(name="listings", stream="KV_listings", pre="$KV.listings.", js=js,
                  direct=True)
    leader = leader_reads(kv)
    assert leader is not kv and not leader._direct
    assert (leader._name, leader._stream, leader._pre, leader._js) == (
        "listings", "KV_listings", "$KV.listings.", js)
    fake = FakeKeyValue()
    assert leader_reads(cast(KeyValue, fake)) is fake  # a test double: as it is


class _EarlyMarker:
    """nats-py's watcher when the start marker overtook entries the server had sent:
    the marker first, then the entries (the last with delta 0); the consumer says
    how many it delivered."""

    def __init__(self, entries: list[Any], delivered: int, stall: bool = False) -> None:
        self.queue: list[Any] = [None, *entries]
        self.stall = stall
        info = type("Info", (), {"delivered": type("Seq", (), {"consumer_seq": delivered})})
        sub = type("Sub", (), {"consumer_info": staticmethod(_returns(info))})
        self._sub = sub()

    async def updates(self, timeout: float) -> Any:  # noqa: ASYNC109 (nats-py's signature)
        if not self.queue:
            if self.stall:
                import nats.errors
                raise nats.errors.TimeoutError
            raise AssertionError("read past the last entry")
        return self.queue.pop(0)

    async def stop(self) -> None:
        return None


def _returns(value: Any) -> Any:
    async def call() -> Any:
        return value
    return call


def _entry(key: str, value: bytes | None, delta: int, op: str | None = None) -> Any:
    return type("Entry", (), {"key": key, "value": value, "delta": delta,
                              "operation": op})()


async def test_a_scan_reads_on_when_the_start_marker_overtook_sent_entries() -> None:
    from infra.kv.repository import watch_latest

    entries = [_entry("a", b"1", 2), _entry("b", b"2", 1), _entry("a", None, 0, "DEL")]
    kv = type("KV", (), {})()

    async def watch(*args: Any, **kwargs: Any) -> _EarlyMarker:
        return _EarlyMarker(entries, delivered=3)

    kv.watch = watch
    assert await watch_latest(cast(Any, kv)) == {"b": b"2"}  # once "a" was deleted

    async def empty(*args: Any, **kwargs: Any) -> _EarlyMarker:
        return _EarlyMarker([], delivered=0)

    kv.watch = empty
    assert await watch_latest(cast(Any, kv)) == {}


async def test_a_scan_without_an_answer_is_an_error_not_a_partial_listing() -> None:
    from infra.errors import KVUnavailable
    from infra.kv.repository import watch_latest

    async def watch(*args: Any, **kwargs: Any) -> _EarlyMarker:
        return _EarlyMarker([_entry("a", b"1", 1)], delivered=2, stall=True)

    kv = type("KV", (), {"watch": staticmethod(watch)})()
    with pytest.raises(KVUnavailable, match=r"no answer within 0\.1 s"):
        await watch_latest(cast(Any, kv), timeout_s=0.1)
