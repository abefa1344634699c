"""HTTP submit → enrich → train → artifacts in a real S3, on the embedded stack.

Every service runs as its own process (``python -m gateway`` ...) against a
private nats-server and the session's SeaweedFS, exactly as ``radtrain up``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats.errors
import pytest
from nats.js.api import DeliverPolicy
from rich.console import Console

from infra.bus.topology import connect
from infra.settings import Settings
from infra.store import open_store
from infra.telemetry.tracing import new_traceparent, trace_id_of
from radtrain.cli.client import ApiCallError, call
from radtrain.cli.demo import build_demo_dataset
from radtrain.servers.nats import free_port
from radtrain.servers.seaweedfs import S3Endpoint
from radtrain.stack import Stack, start_stack
from schemas.events import parse_event

pytestmark = pytest.mark.e2e

TERMINAL = {"completed", "failed", "rejected", "cancelled"}


@pytest.fixture(scope="module")
def stack(s3_server: S3Endpoint, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data = tmp_path_factory.mktemp("stack")
    settings = Settings(
        data_dir=data, store_dir=data / "store", cache_dir=data / "cache", work_dir=data / "work",
        gateway_port=0, nats_port=0, progress_interval_s=0.5, heartbeat_s=2.0,
        handlers_metrics_port=free_port(), runner_metrics_port=free_port(),
        s3_bucket=f"e2e-{uuid.uuid4().hex[:8]}", **s3_server.settings_overrides(),
    )
    st = start_stack(settings)
    yield st
    st.stop()
    assert not [n for n, p in st.procs.items() if p.returncode not in (0, -15)], \
        {n: st.log_tail(n) for n in st.procs}


@pytest.fixture(scope="module")
def dataset_id(stack: Stack) -> str:
    ds_id = f"e2e-{uuid.uuid4().hex[:6]}"
    build_demo_dataset(stack.settings, ds_id, n_cases=24, seed=3, console=Console(quiet=True))
    return ds_id


def submit(stack: Stack, body: dict[str, Any], headers: dict[str, str] | None = None) -> str:
    status, accepted, headers = call("POST", f"{stack.gateway_url}/v1/tasks", body,
                                     headers=headers, token=stack.api_key)
    assert status == 202 and headers["Location"].endswith(accepted["task_id"])
    return str(accepted["task_id"])


def wait_terminal(stack: Stack, task_id: str, timeout_s: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    seen_running = False
    while time.monotonic() < deadline:
        assert not stack.dead_services(), {n: stack.log_tail(n) for n in stack.dead_services()}
        _, rec, _ = call("GET", f"{stack.gateway_url}/v1/tasks/{task_id}", token=stack.api_key)
        seen_running |= rec["state"] == "running"
        if rec["state"] in TERMINAL:
            return dict(rec, seen_running=seen_running)
        time.sleep(0.5)
    raise AssertionError(f"task {task_id} not terminal after {timeout_s}s: {rec}\n"
                         f"{stack.log_tail('runner')}")


def task_body(dataset_id: str, **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "e2e tiny", "flow": "general", "task_type": "classification",
        "dataset_id": dataset_id,
        "model": {"mode": "manual", "network": "mobilenetv3_small_100", "pretrained": False},
        "tuning": {"mode": "manual", "hyperparameters": {
            "epochs": 2, "image_size": 64, "batch_size": 8, "learning_rate": 2e-3}},
    }
    body.update(over)
    return body


async def _history(settings: Settings, task_id: str) -> list[Any]:
    """Every event of one task, from the stream (``tasks.*.<id>``), in order."""
    nc, js = await connect(settings, "e2e-history")
    events = []
    try:
        sub = await js.subscribe(f"tasks.*.{task_id}", ordered_consumer=True,
                                 deliver_policy=DeliverPolicy.ALL)
        while True:
            try:
                msg = await sub.next_msg(timeout=2.0)
            except nats.errors.TimeoutError:
                break
            events.append(parse_event(msg.data))
            if msg.metadata.num_pending == 0:
                break
        await sub.unsubscribe()
    finally:
        await nc.close()
    return events


def _trace_carried(stack: Stack, task_id: str, trace_id: str) -> None:
    """W3C trace: the HTTP request's trace id on every event, and on the runner's log lines."""
    events = asyncio.run(_history(stack.settings, task_id))
    names = {type(e).__name__ for e in events}
    assert {"TaskRequestedEvent", "TaskReadyEvent", "TaskStartedEvent", "TaskProgressEvent",
            "TaskCompletedEvent"} <= names, names
    assert {trace_id_of(e.traceparent) for e in events} == {trace_id}
    lines = [json.loads(line) for line in stack.log_tail("runner", 2000).splitlines()
             if line.startswith("{")]
    assert any(ln.get("task_id") == task_id and ln.get("trace_id") == trace_id for ln in lines)


def test_http_submit_trains_and_stores_artifacts_in_s3(stack: Stack, dataset_id: str) -> None:
    trace = new_traceparent()
    task_id = submit(stack, task_body(dataset_id), headers={"traceparent": str(trace)})
    rec = wait_terminal(stack, task_id)
    assert rec["state"] == "completed", rec
    assert rec["seen_running"] or rec["attempt"] == 1
    assert {"auc", "accuracy", "val_loss"} <= set(rec["metrics"]), rec["metrics"]
    assert rec["progress"] is not None and rec["progress"]["epochs"] == 2

    store = open_store(stack.settings)
    names = {a["name"]: a for a in rec["artifacts"]}
    assert {"model.safetensors", "metrics.json", "spec.json", "history.csv"} <= set(names)
    for art in rec["artifacts"]:
        assert art["uri"].startswith(f"s3://{stack.settings.s3_bucket}/runs/{task_id}/")
        blob = store.get_bytes(art["key"])
        assert hashlib.sha256(blob).hexdigest() == art["sha256"] and len(blob) == art["size"]
    # The record carries exactly the metrics the runner wrote next to the model.
    stored = json.loads(store.get_bytes(names["metrics.json"]["key"]))
    assert rec["metrics"] == stored["metrics"]

    from safetensors.torch import load

    weights = load(store.get_bytes(names["model.safetensors"]["key"]))
    assert any(k.startswith("classifier") for k in weights)
    _trace_carried(stack, task_id, trace.trace_id)
    url = f"{stack.gateway_url}/v1/tasks/{task_id}/artifacts/metrics.json"
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {stack.api_key}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert hashlib.sha256(resp.read()).hexdigest() == names["metrics.json"]["sha256"]
    with pytest.raises(ApiCallError) as exc:
        call("GET", f"{stack.gateway_url}/v1/tasks/{task_id}")  # no key
    assert exc.value.status == 401


def test_bad_requests_end_rejected_with_reasons(stack: Stack, dataset_id: str) -> None:
    bad_net = submit(stack, task_body(dataset_id, model={"mode": "manual",
                                                         "network": "resnet9000"}))
    bad_ds = submit(stack, task_body("no-such-dataset"))
    rec = wait_terminal(stack, bad_net, 60)
    assert rec["state"] == "rejected"
    assert [e["code"] for e in rec["errors"]] == ["unknown_network"]
    assert "resnet9000" in rec["errors"][0]["message"]
    rec = wait_terminal(stack, bad_ds, 60)
    assert rec["state"] == "rejected" and rec["errors"][0]["field"] == "dataset_id"
    with pytest.raises(ApiCallError) as exc:
        call("POST", f"{stack.gateway_url}/v1/tasks", {"flow": "general"}, token=stack.api_key)
    assert exc.value.status == 422


def test_unreadable_case_fails_the_task_not_the_runner(stack: Stack, tmp_path: Path) -> None:
    ds_id = f"bad-{uuid.uuid4().hex[:6]}"
    build_demo_dataset(stack.settings, ds_id, n_cases=20, seed=4, console=Console(quiet=True))
    store = open_store(stack.settings)
    victim = sorted(k for k in store.list(f"datasets/{ds_id}/cases/"))[0]
    store.put_bytes(victim, b"DICM? no, just garbage" + bytes(64))
    task_id = submit(stack, task_body(ds_id))
    rec = wait_terminal(stack, task_id, 120)
    assert rec["state"] == "failed", rec
    assert rec["errors"][-1]["code"] in ("dataset_invalid", "case_unreadable")
    assert Path(victim).name in rec["errors"][-1]["message"]
    assert not stack.dead_services()


def test_list_pages_through_tasks(stack: Stack) -> None:
    _, page, _ = call("GET", f"{stack.gateway_url}/v1/tasks?limit=2&offset=0",
                      token=stack.api_key)
    assert page["total"] >= 3 and len(page["items"]) == 2
    _, rest, _ = call("GET", f"{stack.gateway_url}/v1/tasks?limit=100&offset=2",
                      token=stack.api_key)
    ids = [r["task_id"] for r in page["items"] + rest["items"]]
    assert len(ids) == len(set(ids)) == page["total"]


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return str(resp.read().decode())


def test_metrics_on_every_process(stack: Stack) -> None:
    """After the tasks above: each process exposes its own Prometheus metrics."""
    gateway = _scrape(f"{stack.gateway_url}/metrics")
    assert 'radtrain_http_requests_total{method="POST",route="/v1/tasks",status="202"}' in gateway
    host = stack.settings.metrics_host
    handlers = _scrape(f"http://{host}:{stack.settings.handlers_metrics_port}/metrics")
    assert 'radtrain_events_handled_total{consumer="enrich",outcome="ack",type="requested"}' \
        in handlers
    assert 'radtrain_consumer_lag{consumer="projector"}' in handlers
    runner = _scrape(f"http://{host}:{stack.settings.runner_metrics_port}/metrics")
    assert 'radtrain_events_handled_total{consumer="runner-cpu",outcome="ack",type="ready"}' \
        in runner
    images = re.search(r"^radtrain_runner_images_per_second (\S+)$", runner, re.M)
    assert images is not None and float(images.group(1)) > 0
