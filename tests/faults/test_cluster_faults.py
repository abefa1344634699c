"""Faults in the clustered topology (DESIGN.md §11; issue 13): one cluster for the module.

Three NATS nodes (JetStream R3, ``sync_interval: always``), SeaweedFS, two
gateways, two handlers processes and three runners. Injected, expected:

- kill -9 of one gateway during submissions, clients retrying with the same
  Idempotency-Key on the other -> one task per key, one task.requested each;
- kill -9 of the TASKS stream leader during 1,000 submissions through both
  gateways -> every 202's task is requested once and rejected once (an
  unknown dataset), its KV record says so, no other task appeared;
- SIGSTOP of the TASKS leader for longer than the election timeout (9 s),
  then SIGCONT -> tasks are accepted while it is frozen, it rejoins, nothing
  accepted is lost;
- after each of those three bursts, both handlers processes' task index lists every
  task once, in its state and in the tenant's list of all (by cursor, totals agreeing);
- kill -9 of the runner training a task, two others in the pool -> another
  resumes from the checkpoint (resumed_from_epoch >= 1), one task.completed.

Each test prints its wall time and the longest pause between two 202s.
"""

from __future__ import annotations

import asyncio
import io
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
import torch
from nats.js import JetStreamContext
from rich.console import Console

from infra.bus.topology import TASKS_STREAM, connect
from infra.store import open_store
from radtrain.cli.demo import build_demo_dataset
from radtrain.cluster import Cluster, start_cluster
from runner.checkpoint import newest_key
from schemas.events import parse_event
from tests.faults.cluster_burst import (
    Burst,
    check_exactly_once,
    check_listed,
    rejected_body,
    requested_ids,
)
from tests.faults.helpers import fault_settings, per_task, subject_counts, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(200)]

ELECTION_TIMEOUT_S = 9.0  # nats-server raft: a follower campaigns after 4-9 s without a leader
PUBLISH_ACK_TIMEOUT_S = 10.0  # infra/bus/publish.py: a publish in flight at the freeze
# A publish in flight when the leader froze waits out its ack timeout; its retry then
# waits for a leader, whose election may take a second campaign (CI saw a freeze of
# 9 + 6 s with nothing accepted during it).
FREEZE_S = 2 * ELECTION_TIMEOUT_S + PUBLISH_ACK_TIMEOUT_S
GW_N = 200  # submissions in the gateway test
LEADER_N = 1000
FREEZE_N = 300


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # A killed runner's task comes back after ack_wait_s; a live one heartbeats every second
    # (a tighter pair mistakes a runner starved of CPU on a loaded machine for a dead one).
    # Retries at half the production schedule: shrunk further, a consumer's nak budget
    # (enrich's is 52 s in production, the projector's 213 s) runs out within one leader
    # election plus a freeze on a loaded 2-core machine, and the event is dead-lettered.
    settings = fault_settings(tmp_path_factory.mktemp("cluster-faults"), ack_wait_s=8.0,
                              heartbeat_s=1.0, progress_interval_s=0.5, cancel_poll_s=0.5,
                              retry_delay_scale=0.5)
    started = time.monotonic()
    c = start_cluster(settings, runners=3, offline_weights=False)
    print(f"\ncluster up in {time.monotonic() - started:.1f}s")
    yield c
    c.stop()


@pytest_asyncio.fixture
async def js(cluster: Cluster) -> AsyncIterator[JetStreamContext]:
    nc, js = await connect(cluster.settings, "test-cluster-faults")
    yield js
    await nc.close()


def _healed(cluster: Cluster) -> None:
    """Gateways and nodes a test broke run again, and every node is current."""
    for name in cluster.dead_services():
        if name.startswith("gateway"):
            cluster.restart(name)
    for node in cluster.nats.nodes:
        if not node.running():
            cluster.restart(node.name)
    cluster.nats.wait_healthy(60)


async def test_gateway_killed_behind_the_other(cluster: Cluster, js: JetStreamContext) -> None:
    started = time.monotonic()
    before = await requested_ids(js)
    burst = Burst(cluster.gateway_urls, cluster.api_key, f"gw-{uuid.uuid4().hex[:6]}")

    async def kill() -> float:
        await burst.reached(60)
        cluster.kill("gateway-1")
        return time.monotonic()

    killed_at = asyncio.ensure_future(kill())
    await burst.run(GW_N, rejected_body, concurrency=24, budget_s=60, fault=killed_at)
    assert cluster.dead_services() == ["gateway-1"], cluster.dead_services()
    assert len(burst.accepted) == GW_N and not burst.unexpected(), burst.statuses
    assert all(len(ids) == 1 for ids in burst.answers.values())
    survivor = cluster.gateway_urls[1]
    async with burst.session() as session:  # every client asks once more: the same task
        again = await asyncio.gather(*(burst.post(session, survivor, burst.key(i),
                                                  rejected_body(i)) for i in range(GW_N)))
    assert again == [burst.accepted[burst.key(i)] for i in range(GW_N)]
    tasks = set(burst.accepted.values())
    assert len(tasks) == GW_N
    await check_exactly_once(js, tasks, "rejected")
    await check_listed(burst, tasks, "rejected", js=js)
    assert await requested_ids(js) - before == tasks  # nothing the dead gateway left behind
    await asyncio.to_thread(_healed, cluster)
    print(f"gateway kill: {GW_N} keys -> {GW_N} tasks, answers {dict(burst.statuses)}, "
          f"longest pause {burst.longest_pause(killed_at.result()):.1f}s, "
          f"wall {time.monotonic() - started:.1f}s")


async def test_stream_leader_killed_during_1000_submissions(
        cluster: Cluster, js: JetStreamContext) -> None:
    started = time.monotonic()
    before = await requested_ids(js)
    leader = cluster.stream_leader()
    burst = Burst(cluster.gateway_urls, cluster.api_key, f"lk-{uuid.uuid4().hex[:6]}")

    async def kill_and_restart() -> float:
        await burst.reached(300)
        cluster.kill(leader)
        at = time.monotonic()
        await asyncio.sleep(3.0)
        await asyncio.to_thread(cluster.restart, leader)
        return at

    fault = asyncio.ensure_future(kill_and_restart())
    await burst.run(LEADER_N, rejected_body, concurrency=32, budget_s=90, fault=fault)
    assert len(burst.accepted) == LEADER_N and not burst.unexpected(), burst.statuses
    assert not cluster.dead_services()
    tasks = set(burst.accepted.values())
    assert len(tasks) == LEADER_N and all(len(ids) == 1 for ids in burst.answers.values())
    await check_exactly_once(js, tasks, "rejected")
    await check_listed(burst, tasks, "rejected", js=js)
    assert await requested_ids(js) - before == tasks
    new_leader = cluster.stream_leader()
    await asyncio.to_thread(_healed, cluster)
    print(f"leader kill: {leader} killed after 300 of {LEADER_N}, new leader {new_leader}; "
          f"answers {dict(burst.statuses)}; election pause (longest gap between 202s) "
          f"{burst.longest_pause(fault.result()):.1f}s; wall {time.monotonic() - started:.1f}s")


async def test_frozen_node_rejoins(cluster: Cluster, js: JetStreamContext) -> None:
    started = time.monotonic()
    before = await requested_ids(js)
    victim = cluster.stream_leader()
    node = cluster.nats.node(victim)
    burst = Burst(cluster.gateway_urls, cluster.api_key, f"fz-{uuid.uuid4().hex[:6]}")
    window: dict[str, float] = {}

    async def freeze() -> None:
        await burst.reached(50)
        node.signal(signal.SIGSTOP)
        window["stopped"] = time.monotonic()
        await asyncio.sleep(FREEZE_S)
        node.signal(signal.SIGCONT)
        window["resumed"] = time.monotonic()

    # Spread over the freeze and some: submissions before, during and after it.
    await burst.run(FREEZE_N, rejected_body, concurrency=8, budget_s=90, fault=freeze(),
                    spread_s=FREEZE_S + 6)
    assert len(burst.accepted) == FREEZE_N and not burst.unexpected(), burst.statuses
    during = [t for t in burst.accept_times if window["stopped"] < t < window["resumed"]]
    assert during, (f"nothing accepted while {victim} was frozen", burst.statuses)
    await wait_for(lambda: asyncio.to_thread(node.healthy), 60, f"{victim} to rejoin")
    tasks = set(burst.accepted.values())
    await check_exactly_once(js, tasks, "rejected")
    await check_listed(burst, tasks, "rejected", js=js)
    assert await requested_ids(js) - before == tasks

    async def current() -> bool:
        info = await js.stream_info(TASKS_STREAM)
        peers = info.cluster.replicas or [] if info.cluster else []
        return len(peers) == 2 and all(p.current for p in peers)

    await wait_for(current, 60, "every TASKS replica current")
    print(f"freeze: {victim} stopped {FREEZE_S:.0f}s, {len(during)} accepted meanwhile, "
          f"new leader {cluster.stream_leader()}; answers {dict(burst.statuses)}; longest "
          f"pause {burst.longest_pause(window['stopped']):.1f}s; "
          f"wall {time.monotonic() - started:.1f}s")


def _checkpoint_epoch(cluster: Cluster, task_id: str) -> int | None:
    store = open_store(cluster.settings, ensure_bucket=False)
    key = newest_key(store, task_id)  # the newest attempt's: what the next one resumes from
    if key is None:
        return None
    state = torch.load(io.BytesIO(store.get_bytes(key)), map_location="cpu", weights_only=True)
    return int(state["epoch"])


async def _events(js: JetStreamContext, task_id: str, name: str) -> list[Any]:
    out: list[Any] = []
    seq = 1
    while True:
        try:
            msg = await js.get_msg(TASKS_STREAM, seq, subject=f"tasks.{name}.{task_id}",
                                   next=True)
        except Exception:  # NotFoundError: no more
            return out
        out.append(parse_event(msg.data or b""))
        seq = int(msg.seq or 0) + 1


async def test_runner_killed_mid_epoch_resumes_on_another(
        cluster: Cluster, js: JetStreamContext) -> None:
    started = time.monotonic()
    ds_id = f"rk-{uuid.uuid4().hex[:6]}"
    await asyncio.to_thread(build_demo_dataset, cluster.settings, ds_id, 20, 3,
                            Console(quiet=True))
    built = time.monotonic() - started
    body = {"name": "runner kill", "flow": "general", "task_type": "classification",
            "dataset_id": ds_id,
            "model": {"mode": "manual", "network": "mobilenetv3_small_100", "pretrained": False},
            "tuning": {"mode": "manual", "hyperparameters": {
                "epochs": 2, "image_size": 64, "batch_size": 4, "seed": 1,
                "augmentation": "none"}}}
    burst = Burst(cluster.gateway_urls, cluster.api_key, "rk")
    async with burst.session() as session:
        task_id = await burst.post(session, cluster.gateway_url, f"rk-{ds_id}", body)
    assert task_id is not None
    epoch = await wait_for(lambda: asyncio.to_thread(_checkpoint_epoch, cluster, task_id),
                           120, "the epoch-1 checkpoint", interval_s=0.3)
    ledger = (await _events(js, task_id, "started"))[-1].data
    victim = next(n for n in cluster.names("runner") if cluster.runner_id(n) == ledger.runner_id)
    cluster.kill(victim)
    killed_at = time.monotonic()
    print(f"\nrunner kill: dataset built in {built:.1f}s, kill at {killed_at - started:.1f}s")

    async def ended() -> list[Any] | None:
        return await _events(js, task_id, "completed") or None

    await wait_for(ended, 120, "task.completed after the kill", interval_s=0.5)
    starts = await _events(js, task_id, "started")
    last = starts[-1].data
    assert last.runner_id != ledger.runner_id and last.resumed_from_epoch is not None
    assert last.resumed_from_epoch >= 1, [s.data for s in starts]
    counts = await subject_counts(js, f"tasks.*.{task_id}")
    assert per_task(counts, "completed") == {task_id: 1}
    assert not per_task(counts, "failed")
    await asyncio.to_thread(_healed, cluster)
    print(f"runner kill: {victim} killed after the epoch-{epoch} checkpoint; resumed on "
          f"{last.runner_id} from epoch {last.resumed_from_epoch}; completed "
          f"{time.monotonic() - killed_at:.1f}s after the kill; "
          f"wall {time.monotonic() - started:.1f}s")
