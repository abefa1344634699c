"""An in-memory stand-in for nats-py's ``KeyValue`` (and ``js.key_value``), for unit tests.

It behaves as the real client over a real bucket does, as far as the
repositories use it (tests/integration/test_kv_fake_parity.py checks that the
two agree):

- a bucket is a stream: every write, delete marker and purge marker takes the
  next sequence number, which is the revision; a failed write takes none;
- ``get`` of an absent, deleted or purged key raises ``KeyNotFoundError``;
- ``update(last=n)`` succeeds only if the key's last message (a delete marker
  included) is at ``n``, else ``KeyWrongLastSequenceError``; ``create`` only if
  the key is absent or deleted;
- ``watch`` sends the latest message of each matching key (subject wildcards
  ``*`` and ``>``) with ``delta`` counting down, then ``None``, then live updates;
- every call yields to the event loop first, so concurrent callers interleave
  between a read and a write as they do over the network.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import Any

import nats.errors
from nats.js.errors import (
    APIError,
    BucketNotFoundError,
    InvalidKeyError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoKeysError,
)
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue

_VALID_KEY = re.compile(r"^[-/_=.a-zA-Z0-9]+$")


def _check(key: str) -> None:
    if not key or key[0] == "." or key[-1] == "." or not _VALID_KEY.match(key):
        raise InvalidKeyError(key)


def subject_matches(pattern: str, key: str) -> bool:
    """NATS subject matching: ``*`` is one token, a final ``>`` one or more."""
    want, have = pattern.split("."), key.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(have) == len(want)


@dataclass
class _Msg:
    key: str
    value: bytes
    seq: int
    op: str | None  # None, KV_DEL or KV_PURGE


@dataclass
class FakeWatcher:
    pattern: str
    ignore_deletes: bool
    meta_only: bool
    queue: asyncio.Queue[KeyValue.Entry | None] = field(default_factory=asyncio.Queue)
    stopped: bool = False

    async def updates(self, timeout: float = 5.0) -> KeyValue.Entry | None:  # noqa: ASYNC109 (as nats-py)
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            raise nats.errors.TimeoutError from None

    async def stop(self) -> None:
        self.stopped = True

    def __aiter__(self) -> FakeWatcher:
        return self

    async def __anext__(self) -> KeyValue.Entry | None:
        if self.stopped:
            raise StopAsyncIteration
        return await self.queue.get()

    def offer(self, msg: _Msg, delta: int) -> None:
        if self.stopped or not subject_matches(self.pattern, msg.key):
            return
        if self.ignore_deletes and msg.op is not None:
            return
        self.queue.put_nowait(KeyValue.Entry(
            bucket="", key=msg.key, value=b"" if self.meta_only else msg.value,
            revision=msg.seq, delta=delta, created=None, operation=msg.op))


class FakeKeyValue:
    """One bucket. ``conflicts`` counts the writes refused for a stale revision."""

    def __init__(self, name: str = "fake") -> None:
        self.name = name
        self._seq = 0
        self._last: dict[str, _Msg] = {}  # latest message per key (history is not kept)
        self._watchers: list[FakeWatcher] = []
        self.conflicts = 0

    def _append(self, key: str, value: bytes, op: str | None) -> int:
        self._seq += 1
        msg = _Msg(key, value, self._seq, op)
        self._last[key] = msg
        for w in self._watchers:
            w.offer(msg, 0)
        return self._seq

    def _live(self, key: str) -> _Msg | None:
        msg = self._last.get(key)
        return msg if msg is not None and msg.op is None else None

    async def get(self, key: str, revision: int | None = None,
                  validate_keys: bool = True) -> KeyValue.Entry:
        await asyncio.sleep(0)
        if validate_keys:
            _check(key)
        msg = self._live(key)
        if msg is None or (revision and revision != msg.seq):
            raise KeyNotFoundError
        return KeyValue.Entry(bucket=self.name, key=key, value=msg.value, revision=msg.seq,
                              delta=None, created=None, operation=None)

    async def put(self, key: str, value: bytes, validate_keys: bool = True) -> int:
        await asyncio.sleep(0)
        if validate_keys:
            _check(key)
        return self._append(key, value, None)

    async def create(self, key: str, value: bytes, validate_keys: bool = True,
                     msg_ttl: float | None = None) -> int:
        await asyncio.sleep(0)
        if validate_keys:
            _check(key)
        if self._live(key) is not None:
            self.conflicts += 1
            raise KeyWrongLastSequenceError(description="wrong last sequence")
        return self._append(key, value, None)

    async def update(self, key: str, value: bytes, last: int | None = None,
                     validate_keys: bool = True) -> int:
        await asyncio.sleep(0)
        if validate_keys:
            _check(key)
        current = self._last.get(key)
        if (last or 0) != (current.seq if current else 0):
            self.conflicts += 1
            raise KeyWrongLastSequenceError(description="wrong last sequence")
        return self._append(key, value, None)

    async def delete(self, key: str, last: int | None = None, validate_keys: bool = True,
                     msg_ttl: float | None = None) -> bool:
        await asyncio.sleep(0)
        if validate_keys:
            _check(key)
        current = self._last.get(key)
        if last and last != (current.seq if current else 0):
            self.conflicts += 1
            raise APIError(code=400, err_code=10071, description="wrong last sequence")
        self._append(key, b"", KV_DEL)
        return True

    async def purge(self, key: str, msg_ttl: float | None = None) -> bool:
        await asyncio.sleep(0)
        self._append(key, b"", KV_PURGE)
        return True

    async def keys(self, filters: list[str] | None = None, **kwargs: Any) -> list[str]:
        await asyncio.sleep(0)
        found = [m.key for m in sorted(self._last.values(), key=lambda m: m.seq)
                 if m.op is None and (not filters or any(f in m.key for f in filters))]
        if not found:
            raise NoKeysError
        return found

    async def watch(self, keys: str, headers_only: bool = False, include_history: bool = False,
                    ignore_deletes: bool = False, meta_only: bool = False,
                    inactive_threshold: float | None = None) -> FakeWatcher:
        await asyncio.sleep(0)
        watcher = FakeWatcher(keys, ignore_deletes, meta_only or headers_only)
        present = sorted((m for m in self._last.values() if subject_matches(keys, m.key)),
                         key=lambda m: m.seq)
        for i, msg in enumerate(present):
            watcher.offer(msg, len(present) - 1 - i)
        watcher.queue.put_nowait(None)  # the marker: everything present at start was sent
        self._watchers = [w for w in self._watchers if not w.stopped] + [watcher]
        return watcher


class FakeJetStream:
    """Just ``key_value(bucket)``: the buckets named here exist, as after ``infra apply``."""

    def __init__(self, *buckets: str) -> None:
        self.buckets = {name: FakeKeyValue(name) for name in buckets}

    async def key_value(self, bucket: str) -> FakeKeyValue:
        await asyncio.sleep(0)
        if bucket not in self.buckets:
            raise BucketNotFoundError
        return self.buckets[bucket]
