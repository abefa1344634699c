"""Enrich and the end-to-end rejected path (DESIGN.md §12), against a raw
consume → publish loop with no work, measured in the same run on the same server.

    python -m bench.bench_enrich [--events 3000] [--tasks 2000] [--concurrency 64]
                                 [--rounds 1] [--handlers 1] [--json]

One embedded stack (nats-server with ``sync_interval: always``, the gateway and
the handlers processes) on loopback:

- **e2e rejected**: ``POST /v1/tasks`` (a dataset that does not exist) through
  the gateway → ``task.requested`` → enrich → ``task.rejected`` → projector →
  KV ``tasks`` in state ``rejected``, seen by a core subscription on the bucket's
  subjects; tasks/s from the first POST to the last ``rejected`` write, and p50/p99
  of POST → KV ``rejected`` per task; beside it the gateway's own rate over the
  same POSTs (202s/s), the most the e2e path can reach in that run; CPU ms per task
  of each process at the last ``rejected``, and again once every consumer of the task
  events (the task index is the last) has caught up: the whole cost of a task.
- then the handlers process is stopped and, in this process:
  **raw (one by one)**: fetch a batch, publish each message to another subject
  (JetStream-acked, ``Nats-Msg-Id``) then ack it, one after the other;
  **raw (batch)**: the same with a batch's publishes in flight together;
  **enrich**: the handlers' own enrich subscriber (its row of the handlers table)
  over a backlog of ``task.requested``, events/s until its last ``task.rejected``.

Raw loops use a stream of their own with the ``TASKS`` stream's storage, replicas
and duplicate window, the enrich consumer's batch size and ``max_ack_pending``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

from bench.bench_submit import BODY
from bench.cpu import CpuMeter, ceiling_per_s
from infra.bus.subscriber import Subscriber, run_subscriber
from infra.bus.topology import ENRICH, KV_TASKS, TASKS_STREAM, connect, consumer_configs, stream_of
from infra.settings import Settings
from radtrain.stack import Stack, start_service, start_stack
from schemas.events import TaskRequestedEvent, encode_event
from schemas.tasks import TaskRequested

RAW_STREAM = "BENCHRAW"
REJECTED_MARK = b'"state":"rejected"'
DONE_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Rate:
    path: str
    count: int
    seconds: float
    p50_ms: float | None = None
    p99_ms: float | None = None

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0


def requested_events(n: int) -> list[TaskRequestedEvent]:
    """``n`` task.requested for a dataset that does not exist: each one is rejected."""
    out = []
    for _ in range(n):
        task_id = uuid.uuid4().hex
        out.append(TaskRequestedEvent(source="bench", subject=task_id, data=TaskRequested(
            **BODY, task_id=task_id, tenant="default")))
    return out


async def publish_backlog(js: JetStreamContext, items: list[tuple[str, bytes, str]]) -> None:
    """(subject, bytes, msg id) published 256 at a time, each JetStream-acked."""
    for i in range(0, len(items), 256):
        await asyncio.gather(*(js.publish(s, b, headers={"Nats-Msg-Id": m})
                               for s, b, m in items[i:i + 256]))


# --- the bound: consume → publish with no work --------------------------------------


async def bench_raw(js: JetStreamContext, settings: Settings, n: int, batch: int,
                    concurrent: bool) -> Rate:
    enrich_cfg = consumer_configs(settings)[ENRICH]
    durable = f"benchraw-{uuid.uuid4().hex[:8]}"
    await js.add_stream(StreamConfig(
        name=RAW_STREAM, subjects=[f"{RAW_STREAM.lower()}.>"], storage=StorageType.FILE,
        num_replicas=settings.stream_replicas, duplicate_window=settings.duplicate_window_s))
    try:
        events = requested_events(n)
        await publish_backlog(js, [(f"benchraw.in.{e.subject}", encode_event(e), e.msg_id)
                                   for e in events])
        await js.add_consumer(RAW_STREAM, ConsumerConfig(
            durable_name=durable, filter_subject="benchraw.in.*", ack_policy=AckPolicy.EXPLICIT,
            ack_wait=30.0, max_ack_pending=enrich_cfg.max_ack_pending))
        psub = await js.pull_subscribe_bind(durable=durable, stream=RAW_STREAM)

        async def relay(msg: Msg) -> None:
            task_id = msg.subject.rsplit(".", 1)[1]
            await js.publish(f"benchraw.out.{task_id}", msg.data, timeout=10.0,
                             headers={"Nats-Msg-Id": f"{task_id}:out"})
            await msg.ack()

        done, started = 0, time.perf_counter()
        while done < n:
            msgs = await psub.fetch(batch, timeout=5.0)
            if concurrent:
                await asyncio.gather(*(relay(m) for m in msgs))
            else:
                for m in msgs:
                    await relay(m)
            done += len(msgs)
        seconds = time.perf_counter() - started
        await psub.unsubscribe()
    finally:
        await js.delete_stream(RAW_STREAM)
    return Rate("raw (batch)" if concurrent else "raw (one by one)", n, seconds)


# --- enrich: the handlers' subscriber, in this process ----------------------------------


async def enrich_subscriber(js: JetStreamContext, settings: Settings) -> Subscriber[Any]:
    """The enrich row of the handlers table, with the dependencies the process binds."""
    from handlers.app import subscribers
    from handlers.deliverer import open_webhooks
    from handlers.weights_index import StoreWeightsIndex
    from infra.admission import AdmissionRepo
    from infra.dataset_imports import ImportRepo
    from infra.kv import DatasetRepo, TaskRepo
    from infra.store import open_store

    store, hooks = open_store(settings), await open_webhooks(settings, js)
    try:
        table = subscribers(js=js, datasets=await DatasetRepo.open(js),
                            tasks=await TaskRepo.open(js), store=store,
                            weights=StoreWeightsIndex(store), hooks=hooks,
                            imports=await ImportRepo.open(js),
                            admissions=await AdmissionRepo.open(js), settings=settings)
    finally:
        await hooks.close()  # enrich needs no HTTP session
    return table[ENRICH]


async def bench_enrich(js: JetStreamContext, sub: Subscriber[Any], n: int) -> Rate:
    """``sub`` (the handlers' enrich subscriber) over a backlog of ``n`` task.requested."""
    events = requested_events(n)
    wanted = {e.subject for e in events}
    finished = asyncio.Event()

    async def on_output(msg: Msg) -> None:
        wanted.discard(msg.subject.rsplit(".", 1)[1])
        if not wanted:
            finished.set()

    outputs = [await js._nc.subscribe(s, cb=on_output)
               for s in ("tasks.rejected.*", "tasks.ready.*")]
    await publish_backlog(js, [(e.nats_subject, encode_event(e), e.msg_id) for e in events])
    stop = asyncio.Event()
    started = time.perf_counter()
    loop = asyncio.create_task(run_subscriber(js, sub, stop, fetch_timeout=0.5))
    try:
        await asyncio.wait_for(finished.wait(), DONE_TIMEOUT_S)
        seconds = time.perf_counter() - started
    finally:
        stop.set()
        await loop
        for out in outputs:
            await out.unsubscribe()
    return Rate("enrich (handlers' subscriber)", n, seconds)


# --- end to end: POST → KV rejected ---------------------------------------------------


def stack_meter(stack: Stack) -> CpuMeter:
    """The processes of the e2e path: the gateway, the handlers, nats-server, this client."""
    pids = {name: proc.pid for name, proc in stack.procs.items()}
    if stack.nats is not None:
        pids["nats-server"] = stack.nats.pid
    return CpuMeter(pids | {"bench client": os.getpid()})


async def wait_settled(js: JetStreamContext, settings: Settings) -> float:
    """Until every handlers consumer on ``TASKS`` has nothing left to deliver or to ack
    (the task index and webhooks still work after the last KV ``rejected``): seconds."""
    durables = [d for d in consumer_configs(settings) if stream_of(d) == TASKS_STREAM]
    started = time.perf_counter()
    while time.perf_counter() - started < DONE_TIMEOUT_S:
        infos = [await js.consumer_info(TASKS_STREAM, d) for d in durables]
        if all(not i.num_pending and not i.num_ack_pending for i in infos):
            break
        await asyncio.sleep(0.1)
    return time.perf_counter() - started


async def stream_seqs(js: JetStreamContext) -> dict[str, int]:
    """Each stream's last sequence. The difference over a run counts its JetStream writes
    (each fsync'd before its ack with ``sync_interval: always``): a cost that, unlike a
    rate, no other load on the machine moves."""
    return {info.config.name or "": info.state.last_seq for info in await js.streams_info()}


async def bench_e2e(stack: Stack, n: int, concurrency: int, cpu: dict[str, float] | None = None,
                    settled: dict[str, float] | None = None,
                    writes: dict[str, float] | None = None) -> list[Rate]:
    """The e2e rate, and the gateway's own rate over the same POSTs (its 202s); ``cpu``
    receives each process's CPU milliseconds per task over the run, ``settled`` the same
    once every consumer of the task events is done (``after_s``: how long after), and
    ``writes`` each stream's writes per task by then."""
    meter = stack_meter(stack)
    meter.begin()
    nc, js = await connect(stack.settings, "bench-e2e")
    seqs = await stream_seqs(js)
    rejected_at: dict[str, float] = {}
    posted: dict[str, float] = {}
    finished = asyncio.Event()

    async def on_kv(msg: Msg) -> None:
        if REJECTED_MARK in msg.data:
            task_id = msg.subject.rsplit(".", 1)[1]
            rejected_at.setdefault(task_id, time.perf_counter())
            if len(posted) >= n and posted.keys() <= rejected_at.keys():
                finished.set()

    kv_sub = await nc.subscribe(f"$KV.{KV_TASKS}.>", cb=on_kv)
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    url = f"{stack.gateway_url}/v1/tasks"
    try:
        async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
            async def post(count: int) -> None:
                for _ in range(count):
                    sent = time.perf_counter()
                    async with session.post(url, json=BODY) as resp:
                        if resp.status != 202:
                            raise RuntimeError(f"gateway: {resp.status} {await resp.text()}")
                        posted[(await resp.json())["task_id"]] = sent

            started = time.perf_counter()
            share = [n // concurrency + (i < n % concurrency) for i in range(concurrency)]
            await asyncio.gather(*(post(c) for c in share))
            post_s = time.perf_counter() - started
            if posted.keys() <= rejected_at.keys():
                finished.set()
            await asyncio.wait_for(finished.wait(), DONE_TIMEOUT_S)
        if cpu is not None:
            cpu.update(meter.per_item_ms(n))
        if settled is not None:
            after_s = await wait_settled(js, stack.settings)
            settled.update(meter.per_item_ms(n) | {"after_s": after_s})
            if writes is not None:
                now = await stream_seqs(js)
                writes.update({k: (v - seqs.get(k, 0)) / n for k, v in sorted(now.items())
                               if v > seqs.get(k, 0)})
    finally:
        await kv_sub.unsubscribe()
        await nc.close()
    latencies = sorted(rejected_at[t] - posted[t] for t in posted)
    seconds = max(rejected_at[t] for t in posted) - started
    return [Rate("e2e rejected (POST → KV)", n, seconds, statistics.median(latencies) * 1000,
                 latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000),
            Rate("  of which gateway POST → 202", n, post_s)]


# --- the run ------------------------------------------------------------------------


def stop_service(stack: Stack, name: str) -> None:
    proc = stack.procs.pop(name)
    proc.send_signal(signal.SIGTERM)
    proc.wait(30)


def add_handlers(stack: Stack, count: int) -> list[str]:
    """``count`` more handlers processes beside the stack's (a pool, as in ``radtrain up
    --cluster``): their names in ``stack.procs``."""
    names = [f"handlers-{i}" for i in range(2, count + 2)]
    for name in names:
        start_service(stack, name, "handlers")
    return names


def run(args: argparse.Namespace, data: Path, cpu: dict[str, float] | None = None,
        settled: dict[str, float] | None = None,
        writes: dict[str, float] | None = None) -> list[Rate]:
    settings = Settings(data_dir=data, store_dir=data / "store", cache_dir=data / "cache",
                        work_dir=data / "work", gateway_port=0, nats_port=0,
                        rate_limit_per_s=1e9, rate_limit_burst=1_000_000_000,
                        log_level="WARNING")
    stack = start_stack(settings, services=("gateway", "handlers"))
    results: list[Rate] = []
    try:
        pool = ["handlers", *add_handlers(stack, args.handlers - 1)]
        asyncio.run(bench_e2e(stack, min(100, args.tasks), min(16, args.concurrency),
                              settled={}))  # warm-up, and nothing left of it to do
        for _ in range(args.rounds):
            results += asyncio.run(bench_e2e(stack, args.tasks, args.concurrency, cpu,
                                             settled, writes))
        for name in pool:
            stop_service(stack, name)

        async def in_process() -> list[Rate]:
            nc, js = await connect(stack.settings, "bench-enrich")
            out: list[Rate] = []
            try:
                sub = await enrich_subscriber(js, stack.settings)
                for _ in range(args.rounds):
                    for concurrent in (False, True):
                        out.append(await bench_raw(js, stack.settings, args.events, sub.batch,
                                                   concurrent))
                    out.append(await bench_enrich(js, sub, args.events))
            finally:
                await nc.close()
            return out

        results += asyncio.run(in_process())
    finally:
        stack.stop()
    return results


def best(results: list[Rate], path: str) -> float:
    return max(r.rate for r in results if r.path.startswith(path))


def ratios(results: list[Rate]) -> dict[str, float]:
    raw1, rawb = best(results, "raw (one"), best(results, "raw (batch")
    enrich, e2e = best(results, "enrich"), best(results, "e2e")
    return {"enrich / raw (batch)": enrich / rawb, "enrich / raw (one by one)": enrich / raw1,
            "e2e rejected / raw (batch)": e2e / rawb,
            "enrich / target 1000 events/s": enrich / 1000.0,
            "e2e rejected / target 500 tasks/s": e2e / 500.0}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=3000, help="backlog for enrich and raw")
    parser.add_argument("--tasks", type=int, default=2000, help="POSTs for the e2e path")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent POSTs")
    parser.add_argument("--rounds", type=int, default=1, help="repeat each measure")
    parser.add_argument("--handlers", type=int, default=1,
                        help="handlers processes for the e2e path (a pool sharing its consumers)")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args(argv)
    cpu: dict[str, float] = {}
    settled: dict[str, float] = {}
    writes: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="radtrain-bench-") as tmp:
        results = run(args, Path(tmp), cpu, settled, writes)
    report = {"events": args.events, "tasks": args.tasks, "concurrency": args.concurrency,
              "handlers": args.handlers,
              "results": [asdict(r) | {"rate": r.rate} for r in results],
              "ratios": ratios(results),
              "e2e_cpu_ms_per_task": cpu, "e2e_cpu_ceiling_per_s": ceiling_per_s(cpu),
              "e2e_settled_cpu_ms_per_task": {k: v for k, v in settled.items() if k != "after_s"},
              "e2e_settled_after_s": settled.get("after_s"),
              "e2e_writes_per_task": writes}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print(report)
    return report


def _print(report: dict[str, Any]) -> None:
    print(f"enrich: {report['events']} events; e2e: {report['tasks']} tasks, "
          f"concurrency {report['concurrency']}, {report['handlers']} handlers process(es)")
    print(f"{'path':<32}{'count':>7}{'per s':>9}{'p50 ms':>9}{'p99 ms':>9}")
    for r in report["results"]:
        p50 = f"{r['p50_ms']:>9.1f}" if r["p50_ms"] is not None else f"{'':>9}"
        p99 = f"{r['p99_ms']:>9.1f}" if r["p99_ms"] is not None else f"{'':>9}"
        print(f"{r['path']:<32}{r['count']:>7}{r['rate']:>9.0f}{p50}{p99}")
    print("ratios (best of each; DESIGN.md §12 bound: raw consume → publish, same server):")
    for name, value in report["ratios"].items():
        print(f"  {name:<40}{value:>6.2f}")
    cpu = report["e2e_cpu_ms_per_task"]
    if cpu:  # what bounds the e2e path, whatever else shares the machine
        print("e2e CPU ms per task: " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()))
        print(f"  ceiling on {os.cpu_count()} cores at that cost: "
              f"{report['e2e_cpu_ceiling_per_s']:.0f} tasks/s")
    done = report["e2e_settled_cpu_ms_per_task"]
    if done:  # the consumers that finish after the last KV rejected (task index, webhooks)
        print(f"  once every consumer is done ({report['e2e_settled_after_s']:.1f} s later): "
              + ", ".join(f"{k} {v:.2f}" for k, v in done.items()))
    if writes := report["e2e_writes_per_task"]:  # each one fsync'd: what nats-server spends
        print(f"e2e JetStream writes per task: {sum(writes.values()):.2f} ("
              + ", ".join(f"{k} {v:.2f}" for k, v in writes.items()) + ")")


if __name__ == "__main__":
    main()
