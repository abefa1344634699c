"""KV ``runners``: runner id -> :class:`RunnerHeartbeat`, the live members of every pool.

Each runner rewrites its record every ``runner_heartbeat_s`` (runner/presence.py)
and deletes it when it stops; the bucket's TTL (three heartbeats, infra/bus/topology.py)
drops a runner that died without a word. The gateway lists it (``GET /v1/runners``).
"""

from __future__ import annotations

import re

from infra.bus.topology import KV_RUNNERS
from infra.kv.repository import Bucket, BucketRepo
from schemas.pools import RunnerHeartbeat

_UNSAFE = re.compile(r"[^-_=a-zA-Z0-9]")


def runner_key(runner_id: str) -> str:
    """A KV key (one subject token) for any runner id: unsafe characters become ``_``."""
    return _UNSAFE.sub("_", runner_id) or "_"


class RunnerRepo(BucketRepo[RunnerHeartbeat]):
    BUCKET = Bucket(KV_RUNNERS, RunnerHeartbeat)

    async def beat(self, record: RunnerHeartbeat) -> None:
        await self.kv.put(runner_key(record.runner_id), record)

    async def leave(self, runner_id: str) -> None:
        await self.kv.delete(runner_key(runner_id))

    async def live(self) -> list[RunnerHeartbeat]:
        """Every runner whose record has not expired, by pool then id."""
        found = (await self.kv.scan()).values()
        return sorted(found, key=lambda r: (r.pool, r.runner_id))
