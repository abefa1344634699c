"""Listing (issue 13 §6): ``GET /v1/tasks?limit=20`` at 100 and at 100,000 tasks of 10
tenants, through the real gateway process over an authenticated nats-server.

    python -m bench.bench_listing [--tasks 100000] [--small 100] [--tenants 10]
                                  [--requests 200] [--json]

The tasks are written straight into KV ``tasks`` and the numbered lists of KV
``listings`` (infra/kv/listing.py), as the projector and the task-index consumer
would leave them, with core NATS publishes (no acks: a fill of 100,000 tasks
takes seconds, not the minutes of the full pipeline); the fill is then checked
against the streams' message counts. Each measurement is sequential requests
of one client, a different tenant each time: p50/p95 of the whole request.

The bounds, in the same run: p50 at the large size under 50 ms, and at most 2×
the p50 at the small size (the ratio is printed). The state filter and a page
far down a cursor are measured too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from gateway.tenancy import ApiKeyRepo
from infra.bus.topology import KV_LISTINGS, KV_TASKS, connect
from infra.kv.listing import TASKS, Counter, Marker, Slot
from infra.security.sealing import load_seal_key
from infra.settings import Settings
from radtrain.stack import Stack, start_stack
from schemas.record import STATE_RANK, TaskRecord

BOUND_MS = 50.0
MAX_RATIO = 2.0
STATES = ("completed",) * 6 + ("failed", "rejected", "running", "requested")
"""The state of task i of a tenant: STATES[i % 10] (60 % completed)."""
T0 = datetime(2026, 1, 1, tzinfo=UTC)
WINDOW = 4000


@dataclass(frozen=True)
class Latency:
    size: int
    query: str
    requests: int
    p50_ms: float
    p95_ms: float


class Filler:
    """Writes tasks ``[have, want)`` of each tenant, as the index writers would."""

    def __init__(self, nc: NATS, tenants: list[str]) -> None:
        self.nc, self.tenants = nc, tenants
        self.have = 0
        self.state_n: dict[tuple[str, str], int] = {}
        self.sent = 0

    async def _put(self, bucket: str, key: str, value: bytes) -> None:
        await self.nc.publish(f"$KV.{bucket}.{key}", value)
        self.sent += 1
        if self.sent % WINDOW == 0:
            await self.nc.flush(timeout=60)

    async def fill_to(self, per_tenant: int) -> None:
        for i in range(self.have, per_tenant):
            for t, tenant in enumerate(self.tenants):
                await self._task(tenant, i, t)
        for tenant in self.tenants:
            await self._counter(f"{TASKS}.{tenant}.all.n", per_tenant)
            for state in STATE_RANK:
                n = self.state_n.get((tenant, state), 0)
                await self._counter(f"{TASKS}.{tenant}.s.{state}.n", n)
                await self._counter(f"{TASKS}.{tenant}.s.{state}.live", n)
        await self.nc.flush(timeout=60)
        self.have = per_tenant

    async def _task(self, tenant: str, i: int, t: int) -> None:
        task_id, state = f"{tenant}-{i:07d}", STATES[i % len(STATES)]
        at = T0 + timedelta(seconds=i, milliseconds=t)
        record = TaskRecord(task_id=task_id, tenant=tenant, name=f"bench {i}", state=state,
                            flow="general", task_type="classification", dataset_id="ds-bench",
                            created_at=at, updated_at=at)
        sp = self.state_n.get((tenant, state), 0) + 1
        self.state_n[(tenant, state)] = sp
        await self._put(KV_TASKS, task_id, record.model_dump_json().encode())
        await self._put(KV_LISTINGS, f"{TASKS}.{tenant}.all.{i + 1}",
                        Slot(id=task_id).model_dump_json().encode())
        await self._put(KV_LISTINGS, f"{TASKS}.{tenant}.s.{state}.{sp}",
                        Slot(id=task_id).model_dump_json().encode())
        marker = Marker(tenant=tenant, all=i + 1, state=state, sp=sp,
                        order=(1, STATE_RANK[state]))
        await self._put(KV_LISTINGS, f"m{TASKS}.{task_id}", marker.model_dump_json().encode())

    async def _counter(self, key: str, n: int) -> None:
        await self._put(KV_LISTINGS, key, Counter(n=n).model_dump_json().encode())


async def _settled(js: JetStreamContext, expected: dict[str, int], timeout_s: float = 60.0
                   ) -> None:
    """Core publishes have no ack: wait until each bucket's stream holds what was sent."""
    deadline = time.monotonic() + timeout_s
    while True:
        have = {b: (await js.stream_info(f"KV_{b}")).state.messages for b in expected}
        if all(have[b] >= n for b, n in expected.items()):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"fill incomplete: streams hold {have}, expected {expected}")
        await asyncio.sleep(0.2)


async def measure(url: str, keys: dict[str, str], query: str, n: int, size: int) -> Latency:
    """``GET /v1/tasks?<query>`` (``query`` ``one``: one task by id, the gateway's floor)."""
    latencies: list[float] = []
    tenants = list(keys)
    async with aiohttp.ClientSession() as session:
        for i in range(n + 10):  # the first 10 warm connections and caches up
            tenant = tenants[i % len(tenants)]
            headers = {"Authorization": f"Bearer {keys[tenant]}"}
            path = f"/v1/tasks/{tenant}-0000000" if query == "one" else f"/v1/tasks?{query}"
            started = time.perf_counter()
            async with session.get(url + path, headers=headers) as resp:
                body = await resp.json()
                if resp.status != 200 or ("items" in body and not body["items"]):
                    raise RuntimeError(f"GET {path}: {resp.status} {body}")
            if i >= 10:
                latencies.append((time.perf_counter() - started) * 1000)
    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return Latency(size, query, n, statistics.median(ordered), p95)


async def deep_cursor(url: str, key: str, pages: int) -> str:
    """The ``next`` token ``pages`` pages down one tenant's list."""
    query = "limit=20"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session:
        for _ in range(pages):
            async with session.get(f"{url}/v1/tasks?{query}") as resp:
                token = (await resp.json())["next"]
            query = f"limit=20&cursor={token}"
    return query


async def run(stack: Stack, tasks: int, small: int, tenants: int, requests: int
              ) -> list[Latency]:
    nc, js = await connect(stack.settings, "bench-listing")
    try:
        names = [f"bench{t:02d}" for t in range(tenants)]
        repo = await ApiKeyRepo.open(js, seal_key=load_seal_key(stack.settings))
        keys = {name: (await repo.create(name, "bench")).key for name in names}
        base = {b: (await js.stream_info(f"KV_{b}")).state.messages
                for b in (KV_TASKS, KV_LISTINGS)}
        filler = Filler(nc, names)
        results: list[Latency] = []
        for size in (small, tasks):
            await filler.fill_to(size // tenants)
            per = size // tenants
            states = sum(1 for _ in STATE_RANK)
            await _settled(js, {KV_TASKS: base[KV_TASKS] + per * tenants,
                                KV_LISTINGS: base[KV_LISTINGS] + 3 * per * tenants
                                + tenants * (1 + 2 * states)})
            url = stack.gateway_url
            results.append(await measure(url, keys, "one", requests, size))
            results.append(await measure(url, keys, "limit=20", requests, size))
            results.append(await measure(url, keys, "limit=20&state=completed", requests, size))
            if per > 5 * 20:  # a cursor 5 pages down one tenant's list
                deep = await deep_cursor(url, keys[names[0]], 5)
                results.append(await measure(url, {names[0]: keys[names[0]]}, deep,
                                             requests, size))
        return results
    finally:
        await nc.close()


def checks(results: list[Latency], small: int, large: int) -> dict[str, Any]:
    """Each query's p50 at ``large`` over the plain first page's at ``small``."""
    by = {(r.size, "limit=20&cursor" if "cursor" in r.query else r.query): r for r in results}
    out: dict[str, Any] = {}
    for query in ("limit=20", "limit=20&state=completed", "limit=20&cursor"):
        if (large, query) in by:
            ratio = by[(large, query)].p50_ms / by[(small, "limit=20")].p50_ms
            out[f"{query}: p50 {large} / limit=20 p50 {small}"] = round(ratio, 2)
    for size in (small, large):
        out[f"limit=20 p50 / one task p50, {size} tasks"] = round(
            by[(size, "limit=20")].p50_ms / by[(size, "one")].p50_ms, 2)
    big = by[(large, "limit=20")]
    out["limit=20 p50 under 50 ms"] = big.p50_ms < BOUND_MS
    out["limit=20 p50 at most 2x small"] = (
        out[f"limit=20: p50 {large} / limit=20 p50 {small}"] <= MAX_RATIO)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="radtrain-bench-") as tmp:
        data = Path(tmp)
        settings = Settings(data_dir=data, store_dir=data / "store", cache_dir=data / "cache",
                            work_dir=data / "work", gateway_port=0, nats_port=0,
                            nats_sync_always=False, rate_limit_per_s=1e9,
                            rate_limit_burst=1_000_000_000, log_level="WARNING")
        stack = start_stack(settings, services=("gateway",))
        try:
            results = asyncio.run(run(stack, args.tasks, args.small, args.tenants,
                                      args.requests))
        finally:
            stack.stop()
    report = {"tasks": args.tasks, "small": args.small, "tenants": args.tenants,
              "requests": args.requests, "results": [asdict(r) for r in results],
              "checks": checks(results, args.small, args.tasks),
              "seconds": round(time.monotonic() - started, 1)}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print(report)
    return report


def _print(report: dict[str, Any]) -> None:
    print(f"listing: {report['tenants']} tenants, {report['requests']} requests per row, "
          f"{report['seconds']} s in all")
    print(f"{'tasks':>8}  {'GET':<34}{'p50 ms':>9}{'p95 ms':>9}")
    for r in report["results"]:
        query = {"one": "/v1/tasks/<id> (floor)"}.get(r["query"], r["query"])
        query = query if "cursor" not in query else "limit=20&cursor=<5 pages down>"
        print(f"{r['size']:>8}  {query:<34}{r['p50_ms']:>9.2f}{r['p95_ms']:>9.2f}")
    print(f"checks (bound: p50 < {BOUND_MS:g} ms at the large size, "
          f"at most {MAX_RATIO:g}x the small size's, same run):")
    for name, value in report["checks"].items():
        print(f"  {name:<52}{value!s:>8}")


if __name__ == "__main__":
    main()
