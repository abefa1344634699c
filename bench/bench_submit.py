"""Submit path (DESIGN.md §12): gateway requests/s and p99 to a JetStream-acked
``task.requested``, against raw nats-py JetStream publishes at the same
concurrency, each with ``sync_interval: always`` (fsync before every ack,
what radtrain configures) and with the server's default lazy fsync.

    python -m bench.bench_submit [--requests 2000] [--concurrency 32]
                                 [--gateway-workers N] [--json]

Each mode gets a fresh embedded stack (nats-server + the gateway: one process,
or a supervisor and N worker processes on one port) on loopback; the client
runs in this process. Numbers depend on the disk: fsync costs little on a
tmpfs and a lot on a network volume.

Each path also reports the CPU milliseconds per request of each process (the
gateway's workers summed, nats-server, this client) and the rate the
machine's cores allow at that cost: on a small machine the HTTP client and
nats-server share the cores with the gateway, which a rate alone hides.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.bare_http import BODY, bare_server, publish_one
from bench.cpu import CpuMeter, ceiling_per_s
from gateway import keyed_ids
from gateway.keyed_ids import KeyedIds
from infra.bus.topology import connect
from infra.settings import Settings
from radtrain.stack import Stack, start_stack

BODY_BYTES = json.dumps(BODY).encode()
"""Encoded once, as a client holding its request would send it."""


@dataclass(frozen=True)
class Result:
    sync: str
    path: str
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    cpu_ms: dict[str, float]
    """CPU milliseconds per request of each process over the measured run, and ``total``."""

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


def _result(sync: str, path: str, seconds: float, latencies: list[float],
            cpu_ms: dict[str, float]) -> Result:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return Result(sync, path, len(latencies), seconds, statistics.median(ordered) * 1000,
                  p99 * 1000, cpu_ms)


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (a gateway supervisor's workers); Linux only."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            out.append(int(stat.parent.name))
    return out


def stack_meter(stack: Stack) -> CpuMeter:
    """The processes of the submit path: each gateway process, nats-server, this client."""
    pids: dict[str, int] = {}
    gateway = stack.procs.get("gateway")
    if gateway is not None:
        workers = _children(gateway.pid)
        pids |= {f"gateway worker {i}": p for i, p in enumerate(sorted(workers), 1)}
        pids["gateway" if not workers else "gateway supervisor"] = gateway.pid
    if stack.nats is not None:
        pids["nats-server"] = stack.nats.pid
    return CpuMeter(pids | {"bench client": os.getpid()})


def _gateway_total(cpu: dict[str, float]) -> dict[str, float]:
    """Workers summed into ``gateway`` (each worker's share stays, for the balance)."""
    parts = {k: v for k, v in cpu.items() if k.startswith("gateway")}
    return {"gateway": sum(parts.values())} | cpu if len(parts) > 1 else cpu


async def bench_gateway(stack: Stack, n: int, concurrency: int, sync: str,
                        with_key: bool) -> Result:
    headers = {"Authorization": f"Bearer {stack.api_key}", "Content-Type": "application/json"}
    seconds, lat, cpu = await _post_tasks(f"{stack.gateway_url}/v1/tasks", headers, n,
                                          concurrency, with_key, lambda: stack_meter(stack))
    return _result(sync, "gateway+idempotency-key" if with_key else "gateway", seconds, lat,
                   _gateway_total(cpu))


async def bench_bare_http(stack: Stack, n: int, concurrency: int, sync: str,
                          publish: bool = False) -> Result:
    """The HTTP hop alone (bench/bare_http.py), with the gateway's client: what one
    request costs this machine before the gateway does anything; with ``publish``,
    the hop and the raw bound's publish (the least an HTTP front of the stream does)."""
    with bare_server(stack.settings if publish else None) as (url, pid):
        headers = {"Authorization": "Bearer x", "Content-Type": "application/json"}
        servers = {"nats-server": stack.nats.pid} if publish and stack.nats else {}
        seconds, lat, cpu = await _post_tasks(
            f"{url}/v1/tasks", headers, n, concurrency, False,
            lambda: CpuMeter({"bare server": pid, **servers, "bench client": os.getpid()}))
    return _result(sync, "bare HTTP+publish" if publish else "bare HTTP", seconds, lat, cpu)


async def _post_tasks(url: str, headers: dict[str, str], n: int, concurrency: int,
                      with_key: bool, meter_of: Callable[[], CpuMeter]
                      ) -> tuple[float, list[float], dict[str, float]]:
    run = uuid.uuid4().hex[:8]
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
        async def one(i: int) -> None:
            extra = {"Idempotency-Key": f"bench-{run}-{i}"} if with_key else None
            async with session.post(url, data=BODY_BYTES, headers=extra) as resp:
                if resp.status != 202:
                    raise RuntimeError(f"{url} answered {resp.status}: {await resp.text()}")

        # Warm-up (connections, key cache) with keys of its own: the measured requests are
        # all new keys (a key the warm-up used would be measured as a replay).
        await _measure(min(50, n), concurrency, lambda i: one(n + i))
        meter = meter_of()
        meter.begin()
        seconds, lat = await _measure(n, concurrency, one)
        return seconds, lat, meter.per_item_ms(n)


async def bench_raw(stack: Stack, n: int, concurrency: int, sync: str) -> Result:
    """The bound: nats-py publishing the same event bytes, acked by JetStream."""
    nc, js = await connect(stack.settings, "bench-raw")
    try:
        async def one(i: int) -> None:
            await publish_one(js)

        await _measure(min(50, n), concurrency, one)
        meter = stack_meter(stack)
        meter.begin()
        seconds, lat = await _measure(n, concurrency, one)
        cpu = {k: v for k, v in meter.per_item_ms(n).items() if not k.startswith("gateway")}
        cpu["total"] = sum(v for k, v in cpu.items() if k != "total")
    finally:
        await nc.close()
    return _result(sync, "raw nats-py", seconds, lat, cpu)


def run_mode(sync_always: bool, n: int, concurrency: int, data: Path,
             gateway_workers: int = 1) -> list[Result]:
    sync = "always" if sync_always else "default"
    settings = Settings(data_dir=data, store_dir=data / "store", cache_dir=data / "cache",
                        work_dir=data / "work", gateway_port=0, nats_port=0,
                        nats_sync_always=sync_always, rate_limit_per_s=1e9,
                        rate_limit_burst=1_000_000_000, log_level="WARNING",
                        gateway_workers=gateway_workers)
    stack = start_stack(settings, services=("gateway",))
    try:
        async def all_paths() -> list[Result]:
            return [await bench_raw(stack, n, concurrency, sync),
                    await bench_bare_http(stack, n, concurrency, sync),
                    await bench_bare_http(stack, n, concurrency, sync, publish=True),
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
        out[f"bare HTTP/raw throughput, sync {sync}"] = by[(sync, "bare HTTP")].rps / raw.rps
        out[f"gateway/bare HTTP throughput, sync {sync}"] = (by[(sync, "gateway")].rps
                                                             / by[(sync, "bare HTTP")].rps)
        least = by[(sync, "bare HTTP+publish")].rps
        out[f"bare HTTP+publish/raw throughput, sync {sync}"] = least / raw.rps
        out[f"gateway/bare HTTP+publish throughput, sync {sync}"] = (
            by[(sync, "gateway")].rps / least)
        out[f"idempotency-key/plain throughput, sync {sync}"] = (
            by[(sync, "gateway+idempotency-key")].rps / by[(sync, "gateway")].rps)
    for path in ("raw nats-py", "gateway", "gateway+idempotency-key"):
        out[f"{path} throughput, always/default"] = (by[("always", path)].rps
                                                     / by[("default", path)].rps)
    return out


def in_key_band(now: float | None = None) -> bool:
    """Whether keyed requests ran in the weekly band, where a new key is claimed in KV
    too (two writes: gateway/keyed_ids.py), so two runs compare like with like. The
    stack's settings are the defaults and it always has a seal key (radtrain/stack.py)."""
    ids = KeyedIds(b"", Settings().idempotency_ttl_s, keyed_ids.EPOCH_S,
                   keyed_ids.EPOCH_ORIGIN_S, keyed_ids.BAND_S)
    return ids.in_band(time.time() if now is None else now)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--gateway-workers", type=int, default=1,
                        help="gateway processes on the port (RADTRAIN_GATEWAY_WORKERS)")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args(argv)
    results: list[Result] = []
    band_at_start = in_key_band()
    with tempfile.TemporaryDirectory(prefix="radtrain-bench-") as tmp:
        for sync_always in (True, False):
            results += run_mode(sync_always, args.requests, args.concurrency,
                                Path(tmp) / ("always" if sync_always else "default"),
                                args.gateway_workers)
    report = {"requests": args.requests, "concurrency": args.concurrency,
              "gateway_workers": args.gateway_workers, "cpus": os.cpu_count(),
              "results": [asdict(r) | {"rps": r.rps, "cpu_ceiling_per_s": ceiling_per_s(r.cpu_ms)}
                          for r in results],
              "ratios": ratios(results), "key_band": band_at_start or in_key_band()}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print(report)
    return report


def _print(report: dict[str, Any]) -> None:
    print(f"submit: {report['requests']} requests, concurrency {report['concurrency']}, "
          f"{report['gateway_workers']} gateway process(es), {report['cpus']} CPUs")
    print(f"{'sync_interval':<14}{'path':<26}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}")
    for r in report["results"]:
        print(f"{r['sync']:<14}{r['path']:<26}{r['rps']:>9.0f}{r['p50_ms']:>9.2f}"
              f"{r['p99_ms']:>9.2f}")
    print("CPU ms per request (what bounds the path whatever else shares the machine):")
    for r in report["results"]:
        cpu = r["cpu_ms"]
        if not cpu:
            continue
        parts = ", ".join(f"{k} {v:.3f}" for k, v in cpu.items()
                          if not k.startswith("gateway ") and k != "total")
        ceiling = r["cpu_ceiling_per_s"]
        print(f"  {r['sync']:<8}{r['path']:<26}{parts}; total {cpu['total']:.3f}"
              + (f" -> at most {ceiling:.0f} req/s on {report['cpus']} CPUs" if ceiling else ""))
    if report["key_band"]:
        print("(keyed requests ran in the weekly band: a KV claim and a publish each)")
    print("ratios (DESIGN.md §12 bound: raw nats-py at the same concurrency):")
    for name, value in report["ratios"].items():
        print(f"  {name:<52}{value:>6.2f}")


if __name__ == "__main__":
    main()
