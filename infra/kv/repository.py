"""One typed repository over a JetStream KV bucket; every bucket is accessed through it.

Values are pydantic models stored as JSON. A read-modify-write goes through
:meth:`KVRepository.update`, a compare-and-set loop on the key's revision: two
writers (two projector instances, a redelivery racing its original) never
overwrite each other's newer state; the loser re-reads and applies its change
again. Each lost round means another writer's update landed, so ``attempts``
compare-and-sets are enough for that many concurrent writers on one key.

Listing is server-side: a watch on a subject pattern (``<tenant>.*``) sends only
the matching keys' latest values, where ``KeyValue.keys(filters=...)`` lists
the whole bucket and filters in the client.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Self, TypeVar

import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import BaseModel, ValidationError

from infra.errors import KVConflict, KVUnavailable
from infra.security.sealing import PREFIX as SEAL_PREFIX
from infra.security.sealing import Sealer, SealError

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


def leader_reads(kv: KeyValue) -> KeyValue:
    """The same bucket, read through its stream leader rather than any replica.

    An R3 bucket answers gets from any replica (``allow_direct``), which may not have
    applied the latest write yet. A writer that lost a race and must learn what the
    winner wrote (infra/kv/listing.py) needs the leader's answer. nats-py builds a
    bucket's reads from these fields (``KeyValue.__init__``); anything else (a test
    double) is returned as it is."""
    fields = ("_name", "_stream", "_pre", "_js")
    if not isinstance(kv, KeyValue) or not all(hasattr(kv, f) for f in fields):
        return kv
    return KeyValue(name=kv._name, stream=kv._stream, pre=kv._pre, js=kv._js, direct=False)


class KVRepository(Generic[M]):
    """Keys to ``M`` in one bucket. Keys are NATS subject tokens: ``[-/_=.a-zA-Z0-9]+``."""

    def __init__(self, kv: KeyValue, model: type[M], bucket: str = "",
                 sealer: Sealer | None = None) -> None:
        self._kv = kv
        self.model = model
        self.bucket = bucket
        self._sealer = sealer
        """Secret buckets: records are HMAC-sealed and a record that does not verify
        reads as absent (infra/security/sealing.py)."""

    @property
    def raw(self) -> KeyValue:
        """The nats-py bucket, for what this repository does not wrap (a watch)."""
        return self._kv

    @classmethod
    async def open(cls, js: JetStreamContext, bucket: str, model: type[M],
                   sealer: Sealer | None = None) -> KVRepository[M]:
        return cls(await js.key_value(bucket), model, bucket, sealer)

    def _encode(self, key: str, value: M) -> bytes:
        data = value.model_dump_json().encode()
        return self._sealer.seal(key, data) if self._sealer else data

    def _decode(self, key: str, raw: bytes) -> M | None:
        """The model; ``None`` (logged) for a record whose seal does not verify."""
        if self._sealer is not None:
            try:
                raw = self._sealer.open(key, raw)
            except SealError as exc:
                log.error("KV %s: ignoring record %s: %s (forged, or written without the "
                          "services' seal key)", self.bucket, key, exc)
                return None
        elif raw.startswith(SEAL_PREFIX):
            log.error("KV %s: record %s is sealed but this process has no seal key "
                      "(RADTRAIN_SECRETS_SEAL_KEY)", self.bucket, key)
            return None
        return self.model.model_validate_json(raw)

    async def get_entry(self, key: str) -> tuple[M, int] | None:
        """The value and its revision; ``None`` if absent or deleted.

        A value that does not validate raises pydantic's ``ValidationError``.
        """
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        value = self._decode(key, entry.value)
        return None if value is None else (value, entry.revision or 0)

    async def get(self, key: str) -> M | None:
        found = await self.get_entry(key)
        return found[0] if found else None

    async def put(self, key: str, value: M) -> int:
        """Write unconditionally; the new revision."""
        return await self._kv.put(key, self._encode(key, value))

    async def create(self, key: str, value: M) -> int | None:
        """Write only if the key is absent (first writer wins): the revision, else ``None``.

        nats-py's ``create`` reads the key after a lost race (to tell a deleted key from
        a live one); on an R3 bucket that read may reach a replica that has not applied
        the winner's write yet and raise ``KeyNotFoundError``: the race is lost all the
        same (seen as orphaned list positions in the cluster fault tests)."""
        try:
            return await self._kv.create(key, self._encode(key, value))
        except (KeyWrongLastSequenceError, KeyNotFoundError):
            return None

    async def compare_and_set(self, key: str, value: M, revision: int) -> int | None:
        """Write only if the key is still at ``revision`` (0: still absent): the new
        revision, or ``None`` when another writer got there first."""
        try:
            if revision:
                return await self._kv.update(key, self._encode(key, value), last=revision)
        except KeyWrongLastSequenceError:
            return None
        return await self.create(key, value)

    async def update(self, key: str, change: Callable[[M | None], M | None], *,
                     attempts: int = 20) -> M | None:
        """Read, apply ``change`` (``None`` when absent), write by compare-and-set; on a
        concurrent write, read again and re-apply. ``change`` returning ``None`` writes
        nothing and returns ``None``; otherwise the value written.

        Raises :class:`~infra.errors.KVConflict` (transient) after ``attempts`` lost rounds.
        """
        for _ in range(attempts):
            current = await self.get_entry(key)
            new = change(current[0] if current else None)
            if new is None:
                return None
            if await self.compare_and_set(key, new, current[1] if current else 0) is not None:
                return new
        raise KVConflict(self.bucket, key, attempts)

    async def delete(self, key: str) -> bool:
        """Delete (a marker; a later :meth:`create` succeeds); ``False`` if absent."""
        try:
            await self._kv.get(key)
        except KeyNotFoundError:
            return False
        await self._kv.delete(key)
        return True

    async def purge(self, key: str) -> None:
        """Remove the key and its history."""
        await self._kv.purge(key)

    async def scan(self, pattern: str = ">", timeout_s: float = 5.0) -> dict[str, M]:
        """``{key: value}`` of every live key matching ``pattern`` (``<tenant>.*``), read in
        one server-filtered pass, in write order. A malformed value is logged and skipped."""
        found: dict[str, M] = {}
        for key, data in (await watch_latest(self._kv, pattern, timeout_s)).items():
            try:
                value = self._decode(key, data)
                if value is not None:
                    found[key] = value
            except ValidationError as exc:  # not the value itself: it may hold a secret
                log.warning("KV %s: skipping malformed value of %s: %s", self.bucket, key,
                            [f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                             for e in exc.errors(include_input=False)[:3]])
        return found

    async def keys(self, pattern: str = ">", timeout_s: float = 5.0) -> list[str]:
        """Live keys matching ``pattern``, without their values."""
        return list(await watch_latest(self._kv, pattern, timeout_s, meta_only=True))


@dataclass(frozen=True)
class Bucket(Generic[M]):
    """A bucket's declaration: its name (infra/bus/topology.py) and the model it holds."""

    name: str
    model: type[M]

    sealed: bool = False
    """A secret bucket: its records are sealed when the services hold a seal key."""

    async def open(self, js: JetStreamContext, seal_key: bytes | None = None
                   ) -> KVRepository[M]:
        sealer = Sealer(seal_key, self.name) if self.sealed and seal_key else None
        return await KVRepository.open(js, self.name, self.model, sealer)


class BucketRepo(Generic[M]):
    """Base of a bucket's typed repository: ``BUCKET`` plus a key scheme over :attr:`kv`."""

    BUCKET: ClassVar[Bucket[Any]]

    def __init__(self, kv: KVRepository[M]) -> None:
        self.kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext, *, seal_key: bytes | None = None) -> Self:
        """``seal_key``: the services' key for the secret buckets (ignored by the others)."""
        return cls(await cls.BUCKET.open(js, seal_key))


async def watch_latest(kv: KeyValue, pattern: str = ">", timeout_s: float = 5.0, *,
               meta_only: bool = False) -> dict[str, bytes]:
    """``{key: raw value}`` of the latest live revision of each key matching ``pattern``
    (values empty with ``meta_only``). Prefer :meth:`KVRepository.scan`, which decodes."""
    watcher = await kv.watch(pattern, meta_only=meta_only)  # deletes too: each has a delta
    found: dict[str, bytes] = {}
    try:
        while True:
            try:
                entry = await watcher.updates(timeout=timeout_s)
            except nats.errors.TimeoutError:
                raise KVUnavailable(f"reading {pattern!r} of a bucket: no answer within "
                                    f"{timeout_s:g} s") from None
            if entry is None:  # the marker: nothing matched, or see _sent_already
                if await _sent_already(watcher):
                    continue
                break
            if entry.value is not None and entry.operation is None:
                found[entry.key] = entry.value
            else:
                found.pop(entry.key, None)
            if entry.delta == 0:
                break
    finally:
        await watcher.stop()
    return found


async def _sent_already(watcher: Any) -> bool:
    """Whether the server has sent entries that the start marker came before.

    nats-py puts the marker when the consumer's info shows nothing pending and
    nothing received yet; an entry the server sent just before that info can still
    be on its way, and the listing came back empty (``keys list`` in CI). The server's
    count of what it delivered tells: then the entries follow, the last with delta 0."""
    sub = getattr(watcher, "_sub", None)  # nats-py's; a test double has none
    if sub is None:
        return False
    info = await sub.consumer_info()
    return bool(info.delivered and info.delivered.consumer_seq)
