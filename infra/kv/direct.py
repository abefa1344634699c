"""Many KV keys in one round trip: JetStream's batched direct get (``multi_last``).

nats-py (2.16) sends one request per ``kv.get``; nats-server 2.11+ answers a
``$JS.API.DIRECT.GET.<stream>`` request naming several subjects with the last
message of each, one message per subject and an end-of-batch status (``204``).
A page of a listing is then three round trips (counter, slots, records), not
2 × ``limit``.

It needs ``allow_direct`` on the bucket's stream (radtrain's ``infra apply``
creates ``tasks`` and ``listings`` with it). A bucket without it (created by an
older radtrain) has no responder: :class:`DirectReader` says so with ``None``
and the caller falls back to one ``kv.get`` per key.
"""

from __future__ import annotations

import asyncio
import json

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

MAX_SUBJECTS = 256
"""Subjects per request (the server caps a batch well above this)."""
_END = {"204", "404", "408", "413"}
_GONE = {"DEL", "PURGE"}


class DirectReader:
    """Batched direct gets on one connection; remembers buckets that lack direct access."""

    def __init__(self, nc: NATS, timeout_s: float = 5.0) -> None:
        self.nc = nc
        self.timeout_s = timeout_s
        self.unavailable: set[str] = set()

    async def get_last(self, bucket: str, keys: list[str]) -> dict[str, bytes] | None:
        """``{key: value}`` of the live keys among ``keys`` (absent or deleted ones left
        out); ``None`` when the bucket does not allow direct gets."""
        if bucket in self.unavailable:
            return None
        found: dict[str, bytes] = {}
        try:
            for part in await asyncio.gather(*(
                    self._batch(bucket, keys[start:start + MAX_SUBJECTS])
                    for start in range(0, len(keys), MAX_SUBJECTS))):
                found |= part
        except nats.errors.NoRespondersError:
            self.unavailable.add(bucket)
            return None
        return found

    async def _batch(self, bucket: str, keys: list[str]) -> dict[str, bytes]:
        if not keys:
            return {}
        prefix = f"$KV.{bucket}."
        found: dict[str, bytes] = {}
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def collect(msg: Msg) -> None:
            headers = msg.headers or {}
            status, subject = headers.get("Status"), headers.get("Nats-Subject", "")
            if done.done():
                return
            if status == "503":
                done.set_exception(nats.errors.NoRespondersError())
            elif status in _END or (status and not subject):
                done.set_result(None)
            elif subject.startswith(prefix) and headers.get("KV-Operation") not in _GONE:
                found[subject[len(prefix):]] = msg.data

        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox, cb=collect)
        try:
            request = {"multi_last": [prefix + k for k in keys], "batch": len(keys)}
            await self.nc.publish(f"$JS.API.DIRECT.GET.KV_{bucket}",
                                  json.dumps(request).encode(), reply=inbox)
            await asyncio.wait_for(done, self.timeout_s)
        except TimeoutError as exc:
            raise nats.errors.TimeoutError from exc
        finally:
            await sub.unsubscribe()
        return found
