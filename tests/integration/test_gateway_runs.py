"""Cancel, artifact listing and the SSE event stream of gateway/runs.py (real NATS)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from nats.js import JetStreamContext

from infra.bus.publish import publish_event
from infra.bus.topology import TASKS_STREAM, connect
from infra.kv import TaskRepo
from infra.settings import Settings
from infra.store import LocalStore
from schemas.events import (
    Artifact,
    TaskCancelled,
    TaskCancelledEvent,
    TaskCompleted,
    TaskCompletedEvent,
    TaskFailed,
    TaskFailedEvent,
    TaskProgress,
    TaskProgressEvent,
    TaskRedriven,
    TaskRedrivenEvent,
    TaskStarted,
    TaskStartedEvent,
)
from schemas.record import TaskRecord
from tests.support.tenancy_utils import apply_streams, bearer, gateway_client, issue_key

pytestmark = pytest.mark.integration

BODY: dict[str, Any] = {
    "name": "runs", "flow": "general", "task_type": "classification", "dataset_id": "ds1",
    "model": {"mode": "manual", "network": "mobilenetv3_small_100", "pretrained": False},
}


@dataclass
class Env:
    client: TestClient
    js: JetStreamContext
    other_key: str
    store: LocalStore


@pytest.fixture
async def env(nats_server: str, tmp_path: Path) -> AsyncIterator[Env]:
    settings = Settings(nats_url=nats_server, store_dir=tmp_path / "store")
    await apply_streams(settings)
    other = await issue_key(settings, "other-tenant")
    nc, js = await connect(settings, "test-runs")
    async with gateway_client(settings, await issue_key(settings, "default")) as c:
        yield Env(c, js, other, LocalStore(tmp_path / "store"))
    await nc.close()


async def submit(env: Env) -> str:
    resp = await env.client.post("/v1/tasks", json=BODY)
    assert resp.status == 202, await resp.text()
    return str((await resp.json())["task_id"])


async def publish_run(env: Env, task_id: str, artifacts: list[Artifact]) -> None:
    src = "radtrain/runner"
    await publish_event(env.js, TaskStartedEvent(source=src, subject=task_id, data=TaskStarted(
        task_id=task_id, runner_id="r1", attempt=1)))
    await publish_event(env.js, TaskProgressEvent(source=src, subject=task_id, data=TaskProgress(
        task_id=task_id, epoch=1, epochs=1, step=1, total_steps=1, loss=0.5)))
    await publish_event(env.js, TaskCompletedEvent(source=src, subject=task_id,
                                                   data=TaskCompleted(
        task_id=task_id, metrics={"auc": 0.9}, artifacts=artifacts, duration_s=1.0)))


def parse_sse(text: str) -> list[dict[str, str]]:
    frames = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines()
                      if line and not line.startswith(":"))
        if fields:
            frames.append(fields)
    return frames


async def test_cancel_is_202_once_404_for_strangers_and_409_when_finished(env: Env) -> None:
    task_id = await submit(env)
    for _ in range(2):  # a double click is one event (deterministic msg id)
        resp = await env.client.post(f"/v1/tasks/{task_id}/cancel", json={"reason": "wrong data"})
        assert resp.status == 202, await resp.text()
        assert (await resp.json()) == {"task_id": task_id, "state": "requested",
                                       "cancel_requested": True}
    info = await env.js.stream_info(TASKS_STREAM, subjects_filter=f"tasks.*.{task_id}")
    assert info.state.subjects == {f"tasks.requested.{task_id}": 1,
                                   f"tasks.cancel_requested.{task_id}": 1}
    raw = await env.js.get_last_msg(TASKS_STREAM, f"tasks.cancel_requested.{task_id}")
    assert b"wrong data" in (raw.data or b"") and b"api-key:" in (raw.data or b"")

    assert (await env.client.post("/v1/tasks/nope/cancel")).status == 404
    stranger = await env.client.post(f"/v1/tasks/{task_id}/cancel",
                                     headers=bearer(env.other_key))
    assert stranger.status == 404
    bad = await env.client.post(f"/v1/tasks/{task_id}/cancel", json={"reason": 3})
    assert bad.status == 422

    await publish_run(env, task_id, [])
    done = await env.client.post(f"/v1/tasks/{task_id}/cancel")
    assert done.status == 409 and (await done.json())["error"]["code"] == "conflict"


async def test_artifacts_are_listed_with_sha256_and_links(env: Env) -> None:
    task_id = await submit(env)
    info = env.store.put_bytes(f"runs/{task_id}/attempts/1/metrics.json", b"{}")
    art = Artifact(name="metrics.json", key=info.key, uri=info.uri, sha256=info.sha256,
                   size=info.size)
    repo = await TaskRepo.open(env.js)
    got = await env.client.get(f"/v1/tasks/{task_id}")
    record = TaskRecord.model_validate(await got.json())
    await repo.upsert(task_id, lambda _: record.model_copy(update={
        "state": "completed", "artifacts": [art]}))
    resp = await env.client.get(f"/v1/tasks/{task_id}/artifacts")
    assert resp.status == 200
    page = await resp.json()
    assert page["total"] == 1
    item = page["items"][0]
    assert item["sha256"] == info.sha256
    assert item["href"] == f"/v1/tasks/{task_id}/artifacts/metrics.json"
    assert item["url"] == item["href"]  # issue 17: never the server's file:// path
    shown = await (await env.client.get(f"/v1/tasks/{task_id}")).json()
    assert shown["artifacts"][0]["uri"] == item["href"] and "file:" not in json.dumps(shown)
    download = await env.client.get(item["href"])
    assert download.status == 200 and await download.read() == b"{}"
    env.store.put_bytes(info.key, b'{"other": 1}')  # the store no longer holds what was recorded
    changed = await env.client.get(item["href"])
    assert changed.status == 503, await changed.text()
    assert (await changed.json())["error"]["code"] == "artifact_mismatch"
    other = await env.client.get(f"/v1/tasks/{task_id}/artifacts", headers=bearer(env.other_key))
    assert other.status == 404


async def test_events_stream_replays_follows_and_closes_after_the_end(env: Env) -> None:
    task_id = await submit(env)
    await publish_run(env, task_id, [])
    resp = await env.client.get(f"/v1/tasks/{task_id}/events")
    assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
    frames = parse_sse(await resp.text())
    assert [f["event"] for f in frames] == ["requested", "started", "progress", "completed"]
    ids = [int(f["id"]) for f in frames]
    assert ids == sorted(ids)
    assert '"radtrain.task.completed.v1"' in frames[-1]["data"]

    again = await env.client.get(f"/v1/tasks/{task_id}/events",
                                 headers={"Last-Event-ID": frames[1]["id"]})
    assert [f["event"] for f in parse_sse(await again.text())] == ["progress", "completed"]
    assert (await env.client.get(f"/v1/tasks/{task_id}/events",
                                 headers=bearer(env.other_key))).status == 404
    assert (await env.client.get(f"/v1/tasks/{task_id}/events",
                                 headers={"Last-Event-ID": "x"})).status == 400


async def test_events_stream_is_live(env: Env) -> None:
    """A client connected before the run sees events as they are published."""
    task_id = await submit(env)
    resp = await env.client.get(f"/v1/tasks/{task_id}/events")
    first = await resp.content.readuntil(b"\n\n")
    assert b"event: requested" in first
    await publish_run(env, task_id, [])
    rest = parse_sse((await resp.content.read()).decode())
    assert [f["event"] for f in rest] == ["started", "progress", "completed"]


async def test_a_reopened_task_can_be_cancelled_and_its_stream_runs_past_the_old_end(
        env: Env) -> None:
    """Generation 1 failed, on-call re-opened it (generation 2): the old failure neither
    blocks a cancel nor ends the event stream."""
    task_id = await submit(env)
    src = "radtrain/test"
    await publish_event(env.js, TaskFailedEvent(source=src, subject=task_id, data=TaskFailed(
        task_id=task_id, code="unexpected", message="boom", retryable=False)))
    await publish_event(env.js, TaskRedrivenEvent(
        source=src, subject=task_id, taskgeneration=2,
        data=TaskRedriven(task_id=task_id, by="oncall", to_state="requested")))
    got = await env.client.get(f"/v1/tasks/{task_id}")
    record = TaskRecord.model_validate(await got.json())
    repo = await TaskRepo.open(env.js)
    await repo.upsert(task_id, lambda _: record.model_copy(update={"generation": 2}))

    resp = await env.client.get(f"/v1/tasks/{task_id}/events")
    frames = []
    while len(frames) < 3:
        frames += parse_sse((await resp.content.readuntil(b"\n\n")).decode())
    assert [f["event"] for f in frames] == ["requested", "failed", "redriven"]

    cancel = await env.client.post(f"/v1/tasks/{task_id}/cancel")
    assert cancel.status == 202, await cancel.text()
    raw = await env.js.get_last_msg(TASKS_STREAM, f"tasks.cancel_requested.{task_id}")
    assert raw.headers is not None and raw.headers["Nats-Msg-Id"].endswith(":g2")
    await publish_event(env.js, TaskCancelledEvent(
        source=src, subject=task_id, taskgeneration=2,
        data=TaskCancelled(task_id=task_id, by="test")))
    rest = parse_sse((await resp.content.read()).decode())
    assert [f["event"] for f in rest] == ["cancel_requested", "cancelled"]
    again = await env.client.post(f"/v1/tasks/{task_id}/cancel")
    assert again.status == 409
