"""Fault: S3 unavailable for 10 s while the runner uploads the trained model.

The whole stack runs (gateway, handlers, runner as processes) against the
session's real SeaweedFS, reached through a proxy that goes down for 10 s the
moment the runner starts sending ``model.safetensors``. The store's own
retries (tenacity, budget ``s3_retry_budget_s``) must carry the upload
through: the task completes on its first attempt, its artifacts intact.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from rich.console import Console

from infra.store import open_store
from radtrain.cli.client import call
from radtrain.cli.demo import build_demo_dataset
from radtrain.servers.seaweedfs import S3Endpoint
from radtrain.stack import Stack, start_stack
from tests.faults.helpers import fault_settings
from tests.faults.proxy import PausableProxy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

OUTAGE_S = 10.0


@pytest.fixture(scope="module")
def proxy(s3_server: S3Endpoint) -> Iterator[PausableProxy]:
    host, port = s3_server.url.rsplit("//", 1)[1].split(":")
    px = PausableProxy(host, int(port)).start()
    yield px
    px.close()


@pytest.fixture(scope="module")
def stack(proxy: PausableProxy, s3_server: S3Endpoint,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s3 = s3_server.settings_overrides() | {"s3_endpoint_url": proxy.url}
    settings = fault_settings(tmp_path_factory.mktemp("s3-outage"), **s3,
                              s3_bucket=f"outage-{uuid.uuid4().hex[:8]}",
                              s3_retry_budget_s=45.0, progress_interval_s=0.5, heartbeat_s=2.0)
    st = start_stack(settings)
    yield st
    st.stop()


def _wait_final(stack: Stack, task_id: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert not stack.dead_services(), {n: stack.log_tail(n) for n in stack.dead_services()}
        _, rec, _ = call("GET", f"{stack.gateway_url}/v1/tasks/{task_id}", token=stack.api_key)
        if rec["state"] in ("completed", "failed", "rejected", "cancelled"):
            return dict(rec)
        time.sleep(0.5)
    raise AssertionError(f"task {task_id} not finished:\n{stack.log_tail('runner', 60)}")


def test_upload_survives_ten_seconds_without_s3(stack: Stack, proxy: PausableProxy) -> None:
    ds = f"s3o-{uuid.uuid4().hex[:6]}"
    build_demo_dataset(stack.settings, ds, n_cases=24, seed=5, console=Console(quiet=True))
    proxy.down_on(b"/model.safetensors", OUTAGE_S)
    body = {"name": "s3 outage", "flow": "general", "task_type": "classification",
            "dataset_id": ds,
            "model": {"mode": "manual", "network": "mobilenetv3_small_100", "pretrained": False},
            "tuning": {"mode": "manual", "hyperparameters": {
                "epochs": 2, "image_size": 64, "batch_size": 8}}}
    _, accepted, _ = call("POST", f"{stack.gateway_url}/v1/tasks", body, token=stack.api_key)
    rec = _wait_final(stack, accepted["task_id"], 180)

    assert proxy.triggered.is_set(), "the upload never reached the proxy"
    assert proxy.outage is not None and proxy.outage[1] - proxy.outage[0] >= OUTAGE_S - 0.5
    assert rec["state"] == "completed", rec
    assert rec["attempt"] == 1  # carried by the store's retries, not by a redelivery
    log = stack.log_tail("runner", 400)
    retries = [line for line in log.splitlines()
               if "model.safetensors" in line and "failed (attempt" in line]
    assert retries, log
    store = open_store(stack.settings)
    weights = next(a for a in rec["artifacts"] if a["name"] == "model.safetensors")
    assert hashlib.sha256(store.get_bytes(weights["key"])).hexdigest() == weights["sha256"]
    print(f"S3 outage {proxy.outage[1] - proxy.outage[0]:.1f}s, {proxy.cuts} connection(s) "
          f"cut/refused, {len(retries)} retried S3 call(s), task completed on attempt "
          f"{rec['attempt']}")
