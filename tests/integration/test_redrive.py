"""On-call re-opening and CloudEvents out, against a real nats-server and the handlers loop.

- enrich fails (its weights store is "down") until max_deliver: the forwarder
  dead-letters the request and fails the task; ``radtrain dlq redrive`` then
  re-opens it as generation 2 and it reaches ``ready``, its record naming the
  redrive;
- ``radtrain replay`` of a running task is refused and publishes nothing;
  ``--force`` re-opens it as the next generation;
- webhooks are structured CloudEvents (``application/cloudevents+json``) that the
  official SDK reads, with the extension attribute the upstream request carried.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cloudevents.core.bindings.http import HTTPMessage, from_http_event, to_binary_event
from cloudevents.core.v1.event import CloudEvent
from nats.js import JetStreamContext
from standardwebhooks.webhooks import Webhook
from typer.testing import CliRunner

import handlers.enrich.handler as enrich_handler
from handlers.app import run as run_handlers
from infra.bus import dead_letters as dlq
from infra.bus.publish import publish_event
from infra.bus.stream_read import scan
from infra.bus.topology import ENRICH, TASKS_STREAM, apply, connect
from infra.errors import TransientError
from infra.kv import DatasetRepo, TaskRepo, WebhookRepo
from infra.security.signing import new_secret
from infra.settings import Settings
from radtrain.cli.main import app
from radtrain.oncall.dead_letter_ops import list_dead_letters
from schemas.events import TaskRequestedEvent, TaskStarted, TaskStartedEvent, parse_event
from schemas.record import TaskRecord
from schemas.tenancy import SigningSecret
from schemas.webhooks import WebhookSubscription
from tests.faults.helpers import wait_for
from tests.support.factories import dataset, request

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
T = TypeVar("T")


@pytest.fixture
def settings(nats_server: str, tmp_path: Path) -> Settings:
    return Settings(nats_url=nats_server, store_dir=tmp_path / "store",
                    webhooks_allow_private=True, webhook_timeout_s=3.0,
                    webhook_retry_base_s=0.2, webhook_retry_max_delay_s=1.0,
                    webhook_retry_window_s=5.0)


@pytest.fixture
async def js(settings: Settings) -> AsyncIterator[JetStreamContext]:
    nc, js = await connect(settings, "test-redrive")
    await apply(js, settings)
    yield js
    await nc.close()


@pytest.fixture
async def handlers(settings: Settings, js: JetStreamContext) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_handlers(settings, stop))
    yield
    stop.set()
    await asyncio.wait_for(task, 20)


Call = tuple[dict[str, str], bytes]


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[Call]]]:
    calls: list[Call] = []

    async def hook(req: web.Request) -> web.Response:
        calls.append((dict(req.headers), await req.read()))
        return web.Response(status=204)

    web_app = web.Application()
    web_app.router.add_post("/hook", hook)
    server = TestServer(web_app, host="127.0.0.1")
    await server.start_server()
    yield f"http://127.0.0.1:{server.port}/hook", calls
    await server.close()


async def eventually(check: Callable[[], Awaitable[T | None]], what: str,
                     timeout_s: float = 30.0) -> T:
    return await wait_for(check, timeout_s, what, interval_s=0.1)


def record_where(js: JetStreamContext, task_id: str, **want: Any
                 ) -> Callable[[], Awaitable[TaskRecord | None]]:
    async def check() -> TaskRecord | None:
        found = await (await TaskRepo.open(js)).get(task_id)
        rec = found[0] if found else None
        ok = rec is not None and all(getattr(rec, k) == v for k, v in want.items())
        return rec if ok else None
    return check


async def history(js: JetStreamContext, task_id: str) -> list[Any]:
    return [m async for m in scan(js, TASKS_STREAM, subject=f"tasks.*.{task_id}")]


def cli(settings: Settings, *args: str) -> Any:
    env = {"RADTRAIN_NATS_URL": settings.nats_url, "RADTRAIN_STORE_DIR": str(settings.store_dir),
           "COLUMNS": "250"}
    return CliRunner().invoke(app, list(args), env=env)


async def subscribe(js: JetStreamContext, tenant: str, url: str) -> str:
    secret = new_secret()
    now = datetime.now(UTC)
    await (await WebhookRepo.open(js)).put(WebhookSubscription(
        id=f"wh{uuid.uuid4().hex[:8]}", tenant=tenant, url=url, created_at=now,
        event_types=["task.failed", "task.rejected"],
        secrets=[SigningSecret(secret=secret, created_at=now)]))
    return secret


def read_webhook(call: Call, secret: str) -> Any:
    """Signed over the exact body, a structured CloudEvent the official SDK reads."""
    headers, body = call
    Webhook(secret).verify(body, headers)
    assert headers["Content-Type"] == "application/cloudevents+json"
    return from_http_event(HTTPMessage(headers=headers, body=body))


async def test_dlq_redrive_of_a_failed_enrich_letter_runs_it_again(
        settings: Settings, js: JetStreamContext, handlers: None,
        receiver: tuple[str, list[Call]], monkeypatch: pytest.MonkeyPatch) -> None:
    task_id, tenant, ds_id = uuid.uuid4().hex, f"t{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    await (await DatasetRepo.open(js)).put(dataset(id=ds_id, tenant=tenant))
    secret = await subscribe(js, tenant, receiver[0])
    down = True
    real_enrich = enrich_handler.enrich

    def enrich_with_store(*args: Any) -> Any:
        if down and args[0].task_id == task_id:
            raise TransientError("store_unavailable", "weights store down", delay_s=0.05)
        return real_enrich(*args)

    monkeypatch.setattr(enrich_handler, "enrich", enrich_with_store)
    await publish_event(js, TaskRequestedEvent(
        source="urn:pacs", subject=task_id, ward="7",  # type: ignore[call-arg]
        data=request(task_id=task_id, tenant=tenant, dataset_id=ds_id)))

    async def letter() -> list[dlq.StoredDeadLetter]:
        return await list_dead_letters(js, ENRICH, task_id)
    [dead] = await eventually(letter, "the enrich dead letter")
    assert "weights store down" in dead.get(dlq.H_ERROR)
    failed = await eventually(record_where(js, task_id, state="failed"), "task failed")
    assert failed.generation == 1 and [e.code for e in failed.errors] == ["dead_letter"]
    hook = read_webhook(await eventually(lambda: _first(receiver[1]), "failed webhook"), secret)
    assert hook.get_type() == "radtrain.task.failed.v1" and hook.get_subject() == task_id
    assert hook.get_extension("ward") == "7"  # carried from the upstream request

    down = False  # the store is back; on-call redrives the letter
    out = await asyncio.to_thread(cli, settings, "dlq", "redrive", str(dead.seq), "--yes",
                                  "--by", "alice", "--reason", "weights store back")
    assert out.exit_code == 0, out.output
    assert f"task {task_id} re-opened as generation 2 (failed -> requested)" in out.output

    rec = await eventually(record_where(js, task_id, state="ready", generation=2),
                           "the task ready again, as generation 2")
    [redrive] = rec.redrives
    assert (redrive.by, redrive.reason, redrive.from_state, redrive.to_state,
            redrive.dead_letter_seq) == ("alice", "weights store back", "failed", "requested",
                                         dead.seq)
    assert [e.code for e in rec.errors] == ["dead_letter"]  # the history stays
    ready = [m for m in await history(js, task_id) if m.subject.startswith("tasks.ready.")]
    assert [m.headers["Nats-Msg-Id"] for m in ready] == [f"{task_id}:ready:g2"]
    event = parse_event(ready[0].data)
    assert event.taskgeneration == 2 and event.extensions == {"ward": "7"}
    assert await list_dead_letters(js, ENRICH, task_id) == []


async def _first(calls: list[Call]) -> Call | None:
    return calls[0] if calls else None


async def test_replay_of_a_running_task_is_refused_unless_forced(
        settings: Settings, js: JetStreamContext, handlers: None) -> None:
    task_id, ds_id = uuid.uuid4().hex, uuid.uuid4().hex
    await (await DatasetRepo.open(js)).put(dataset(id=ds_id))
    await publish_event(js, TaskRequestedEvent(source="t", subject=task_id, data=request(
        task_id=task_id, dataset_id=ds_id)))
    await eventually(record_where(js, task_id, state="ready"), "task ready")
    await publish_event(js, TaskStartedEvent(source="runner", subject=task_id, data=TaskStarted(
        task_id=task_id, runner_id="r1", attempt=1)))
    await eventually(record_where(js, task_id, state="running"), "task running")
    before = await history(js, task_id)

    refused = await asyncio.to_thread(cli, settings, "replay", "--task", task_id, "--yes")
    assert refused.exit_code == 1, refused.output
    assert f"task {task_id} is running (generation 1)" in refused.output
    assert "nothing published" in refused.output
    await asyncio.sleep(0.5)
    assert len(await history(js, task_id)) == len(before)

    forced = await asyncio.to_thread(cli, settings, "replay", "--task", task_id, "--force",
                                     "--yes", "--by", "bob", "--reason", "runner host lost")
    assert forced.exit_code == 0, forced.output
    assert f"task {task_id} re-opened as generation 2" in forced.output
    rec = await eventually(record_where(js, task_id, state="ready", generation=2),
                           "the task re-opened and enriched again as generation 2")
    assert [(r.by, r.from_state, r.to_state) for r in rec.redrives] == [
        ("bob", "running", "requested")]
    subjects = [m.subject.split(".")[1] for m in await history(js, task_id)]
    assert subjects == ["requested", "ready", "started", "redriven", "requested", "ready"]


async def test_webhooks_are_cloudevents_carrying_the_senders_extension(
        settings: Settings, js: JetStreamContext, handlers: None,
        receiver: tuple[str, list[Call]]) -> None:
    """An upstream system publishes with the official SDK in binary mode over NATS (ce-*
    headers); the rejection it gets back by webhook is a structured CloudEvent with the
    same extension attribute."""
    task_id, tenant = uuid.uuid4().hex, f"t{uuid.uuid4().hex[:8]}"
    secret = await subscribe(js, tenant, receiver[0])
    body = json.loads(request(task_id=task_id, tenant=tenant,
                              dataset_id="no-such-dataset").model_dump_json())
    sent = to_binary_event(CloudEvent(attributes={
        "type": "radtrain.task.requested.v1", "source": "urn:pacs-bridge", "id": "e-1",
        "subject": task_id, "datacontenttype": "application/json", "studyref": "acc-991"},
        data=body))
    await js.publish(f"tasks.requested.{task_id}", sent.body, headers=dict(sent.headers))
    hook = read_webhook(await eventually(lambda: _first(receiver[1]), "rejected webhook"), secret)
    assert hook.get_type() == "radtrain.task.rejected.v1" and hook.get_subject() == task_id
    assert hook.get_extension("studyref") == "acc-991"
    assert hook.get_extension("taskgeneration") == 1
    assert {e["code"] for e in hook.get_data()["errors"]} == {"dataset_not_found"}
