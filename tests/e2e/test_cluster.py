"""The clustered topology (``radtrain up --cluster``): one task end to end.

Three nats-server nodes with JetStream at R3, SeaweedFS as the store, two
gateways, two handlers processes and two runners, all their own processes.
The task goes in through one gateway; its state and artifacts come back
through the other; every stream and KV bucket keeps three replicas.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import nats
import pytest
from rich.console import Console

from infra.bus.topology import TASKS_STREAM, connect
from infra.settings import Settings
from radtrain.cli.client import call
from radtrain.cli.demo import build_demo_dataset
from radtrain.cluster import Cluster, start_cluster
from radtrain.servers.nats_auth import NatsAuthDir

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
TERMINAL = {"completed", "failed", "rejected", "cancelled"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    data = tmp_path_factory.mktemp("cluster")
    settings = Settings(
        data_dir=data, store_dir=data / "store", cache_dir=data / "cache", work_dir=data / "work",
        gateway_port=0, nats_port=0, progress_interval_s=0.5, heartbeat_s=2.0, log_format="text")
    started = time.monotonic()
    c = start_cluster(settings, offline_weights=False)
    print(f"cluster up in {time.monotonic() - started:.1f}s")
    yield c
    c.stop()


def wait_terminal(cluster: Cluster, url: str, task_id: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert not cluster.dead_services(), {n: cluster.log_tail(n)
                                             for n in cluster.dead_services()}
        _, rec, _ = call("GET", f"{url}/v1/tasks/{task_id}", token=cluster.api_key)
        if rec["state"] in TERMINAL:
            return dict(rec)
        time.sleep(0.5)
    raise AssertionError(f"task {task_id} not terminal after {timeout_s}s: {rec}")


async def _replication(settings: Settings) -> dict[str, tuple[int, int]]:
    """Per stream: (configured replicas, peers the leader reports, itself included)."""
    nc, js = await connect(settings, "e2e-cluster")
    try:
        out = {}
        for info in await js.streams_info():
            cl = info.cluster
            peers = 1 + len(cl.replicas or []) if cl is not None else 0
            out[info.config.name or ""] = (info.config.num_replicas or 0, peers)
        return out
    finally:
        await nc.close()


def test_topology_is_three_nodes_at_r3(cluster: Cluster) -> None:
    assert len(cluster.nats.nodes) == 3 and all(n.healthy() for n in cluster.nats.nodes)
    assert len(cluster.gateway_urls) == len(set(cluster.gateway_urls)) == 2
    assert len(cluster.names("handlers")) == 2 and len(cluster.names("runner")) == 2
    ids = {cluster.runner_id(n) for n in cluster.names("runner")}
    assert len(ids) == 2
    assert cluster.settings.store_backend == "s3" and cluster.settings.stream_replicas == 3
    replication = asyncio.run(_replication(cluster.settings))
    assert TASKS_STREAM in replication and "KV_tasks" in replication
    assert set(replication.values()) == {(3, 3)}, replication
    assert cluster.stream_leader() in {n.name for n in cluster.nats.nodes}


async def _connects(url: str, seed: str, inbox: str) -> bool:
    nc = await nats.connect(url, nkeys_seed=seed, inbox_prefix=inbox, allow_reconnect=False,
                            max_reconnect_attempts=0, connect_timeout=5)
    await nc.flush()
    await nc.close()
    return True


def test_every_node_knows_a_new_upstream_user(cluster: Cluster) -> None:
    """One accounts file for the three nodes: a user issued once works on each."""
    auth = NatsAuthDir(cluster.settings.data_dir / "nats")
    issued = auth.issue_upstream(cluster.settings.default_tenant)
    assert auth.apply()  # every node reloads
    for node in cluster.nats.nodes:
        assert asyncio.run(_connects(node.url, str(issued.seed_file), issued.inbox_prefix))


def test_task_in_through_one_gateway_out_through_the_other(cluster: Cluster) -> None:
    first, second = cluster.gateway_urls
    ds_id = f"cl-{uuid.uuid4().hex[:6]}"
    build_demo_dataset(cluster.settings, ds_id, n_cases=24, seed=3, console=Console(quiet=True))
    body = {"name": "cluster e2e", "flow": "general", "task_type": "classification",
            "dataset_id": ds_id,
            "model": {"mode": "manual", "network": "mobilenetv3_small_100", "pretrained": False},
            "tuning": {"mode": "manual", "hyperparameters": {
                "epochs": 1, "image_size": 64, "batch_size": 8, "learning_rate": 2e-3}}}
    started = time.monotonic()
    status, accepted, _ = call("POST", f"{first}/v1/tasks", body, token=cluster.api_key)
    assert status == 202
    rec = wait_terminal(cluster, second, accepted["task_id"], 180)
    assert rec["state"] == "completed", (rec, [cluster.log_tail(n) for n in cluster.services])
    assert rec["runner_id"] in {cluster.runner_id(n) for n in cluster.names("runner")}
    arts = {a["name"]: a for a in rec["artifacts"]}
    assert arts["model.safetensors"]["uri"].startswith(f"s3://{cluster.settings.s3_bucket}/")
    for url in (first, second):
        req = urllib.request.Request(f"{url}/v1/tasks/{rec['task_id']}/artifacts/metrics.json",
                                     headers={"Authorization": f"Bearer {cluster.api_key}"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            assert hashlib.sha256(resp.read()).hexdigest() == arts["metrics.json"]["sha256"]
    print(f"cluster e2e: submit→completed {time.monotonic() - started:.1f}s on "
          f"{rec['runner_id']}, AUC {rec['metrics'].get('auc', float('nan')):.3f}")
