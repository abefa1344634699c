"""Submit path (DESIGN.md §12): gateway requests/s and p99 to a JetStream-acked
``task.requested``, against raw nats-py JetStream publishes at the same
concurrency, each with ``sync_interval: always`` (fsync before every ack,
what radtrain configures) and with the server's default lazy fsync.

    python -m bench.bench_submit [--requests 2000] [--concurrency 32] [--json]

Each mode gets a fresh embedded stack (nats-server + the gateway process) on
loopback; the client runs in this process. Numbers depend on the disk: fsync
costs little on a tmpfs and a lot on a network volume.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from infra.bus.topology import connect
from infra.settings import Settings
from radtrain.stack import Stack, start_stack
from schemas.events import TaskRequestedEvent, encode_event
from schemas.tasks import TaskRequested

BODY: dict[str, Any] = {
    "name": "bench", "flow": "general", "task_type": "classification", "dataset_id": "ds-bench",
    "model": {"mode": "manual", "network": "mobilenetv3_small_100", "pretrained": False},
}


@dataclass(frozen=True)
class Result:
    sync: str
    path: str
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


async def _measure(n: int, concurrency: int, one: Callable[[int], Awaitable[None]]
                   ) -> tuple[float, list[float]]:
    """Run ``one(i)`` n times, ``concurrency`` at once; wall time and latencies."""
    latencies: list[float] = []
    queue = iter(range(n))

    async def worker() -> None:
        for i in queue:
            started = time.perf_counter()
            await one(i)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies


def _result(sync: str, path: str, seconds: float, latencies: list[float]) -> Result:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return Result(sync, path, len(latencies), seconds, statistics.median(ordered) * 1000,
                  p99 * 1000)


async def bench_gateway(stack: Stack, n: int, concurrency: int, sync: str,
                        with_key: bool) -> Result:
    url = f"{stack.gateway_url}/v1/tasks"
    run = uuid.uuid4().hex[:8]
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        async def one(i: int) -> None:
            extra = {"Idempotency-Key": f"bench-{run}-{i}"} if with_key else {}
            async with session.post(url, json=BODY, headers=extra) as resp:
                if resp.status != 202:
                    raise RuntimeError(f"gateway answered {resp.status}: {await resp.text()}")

        await _measure(min(50, n), concurrency, one)  # warm-up: connections, key cache
        seconds, lat = await _measure(n, concurrency, one)
    return _result(sync, "gateway+idempotency-key" if with_key else "gateway", seconds, lat)


async def bench_raw(settings: Settings, n: int, concurrency: int, sync: str) -> Result:
    """The bound: nats-py publishing the same event bytes, acked by JetStream."""
    nc, js = await connect(settings, "bench-raw")
    try:
        async def one(i: int) -> None:
            task_id = uuid.uuid4().hex
            event = TaskRequestedEvent(source="bench", subject=task_id, data=TaskRequested(
                **BODY, task_id=task_id, tenant="default"))
            await js.publish(event.nats_subject, encode_event(event),
                             headers={"Nats-Msg-Id": event.msg_id})

        await _measure(min(50, n), concurrency, one)
        seconds, lat = await _measure(n, concurrency, one)
    finally:
        await nc.close()
    return _result(sync, "raw nats-py", seconds, lat)


def run_mode(sync_always: bool, n: int, concurrency: int, data: Path) -> list[Result]:
    sync = "always" if sync_always else "default"
    settings = Settings(data_dir=data, store_dir=data / "store", cache_dir=data / "cache",
                        work_dir=data / "work", gateway_port=0, nats_port=0,
                        nats_sync_always=sync_always, rate_limit_per_s=1e9,
                        rate_limit_burst=1_000_000_000, log_level="WARNING")
    stack = start_stack(settings, services=("gateway",))
    try:
        async def all_paths() -> list[Result]:
            return [await bench_raw(stack.settings, n, concurrency, sync),
                    await bench_gateway(stack, n, concurrency, sync, with_key=False),
                    await bench_gateway(stack, n, concurrency, sync, with_key=True)]

        return asyncio.run(all_paths())
    finally:
        stack.stop()


def ratios(results: list[Result]) -> dict[str, float]:
    by = {(r.sync, r.path): r for r in results}
    out: dict[str, float] = {}
    for sync in ("always", "default"):
        raw = by[(sync, "raw nats-py")]
        for path in ("gateway", "gateway+idempotency-key"):
            out[f"{path}/raw throughput, sync {sync}"] = by[(sync, path)].rps / raw.rps
            out[f"{path}/raw p99, sync {sync}"] = by[(sync, path)].p99_ms / raw.p99_ms
    for path in ("raw nats-py", "gateway", "gateway+idempotency-key"):
        out[f"{path} throughput, always/default"] = (by[("always", path)].rps
                                                     / by[("default", path)].rps)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args(argv)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="radtrain-bench-") as tmp:
        for sync_always in (True, False):
            results += run_mode(sync_always, args.requests, args.concurrency,
                                Path(tmp) / ("always" if sync_always else "default"))
    report = {"requests": args.requests, "concurrency": args.concurrency,
              "results": [asdict(r) | {"rps": r.rps} for r in results],
              "ratios": ratios(results)}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print(report)
    return report


def _print(report: dict[str, Any]) -> None:
    print(f"submit: {report['requests']} requests, concurrency {report['concurrency']}")
    print(f"{'sync_interval':<14}{'path':<26}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}")
    for r in report["results"]:
        print(f"{r['sync']:<14}{r['path']:<26}{r['rps']:>9.0f}{r['p50_ms']:>9.2f}"
              f"{r['p99_ms']:>9.2f}")
    print("ratios (DESIGN.md §12 bound: raw nats-py at the same concurrency):")
    for name, value in report["ratios"].items():
        print(f"  {name:<52}{value:>6.2f}")


if __name__ == "__main__":
    main()
