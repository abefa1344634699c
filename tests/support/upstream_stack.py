"""An upstream system's view of the stack, for the CloudEvents SDK tests: a gateway, the
handlers process (enrich, admission, projector, dead letters) and a dataset of the tenant,
on the session's nats-server."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from nats.js import JetStreamContext
from standardwebhooks.webhooks import Webhook

from handlers.app import run as run_handlers
from infra.bus.topology import TASKS_STREAM, connect
from infra.kv import DatasetRepo, TaskRepo
from infra.settings import Settings
from radtrain.oncall.dead_letter_ops import list_dead_letters
from schemas.events import TaskRequestedEvent, parse_event
from schemas.record import TaskRecord
from tests.faults.helpers import wait_for
from tests.support.factories import dataset
from tests.support.tenancy_utils import apply_streams, gateway_client, inbound_secret, issue_key

TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
SCHEMA = "https://example.org/schemas/task-requested.json"


@dataclass
class Stack:
    settings: Settings
    client: TestClient
    js: JetStreamContext
    tenant: str
    secret: str
    dataset_id: str


@pytest.fixture
async def stack(nats_server: str, tmp_path: Path) -> AsyncIterator[Stack]:
    settings = Settings(nats_url=nats_server, store_dir=tmp_path / "store", api_key_cache_s=0,
                        retry_delay_scale=0.05)
    await apply_streams(settings)
    tenant, ds_id = f"sdk{uuid.uuid4().hex[:6]}", f"ds{uuid.uuid4().hex[:8]}"
    nc, js = await connect(settings, "test-sdk")
    await (await DatasetRepo.open(js)).put(dataset(id=ds_id, tenant=tenant))
    stop = asyncio.Event()
    handlers = asyncio.create_task(run_handlers(settings, stop))
    try:
        async with gateway_client(settings, await issue_key(settings, tenant)) as client:
            yield Stack(settings, client, js, tenant, await inbound_secret(settings, tenant),
                        ds_id)
    finally:
        stop.set()
        await asyncio.wait_for(handlers, 15)
        await nc.close()


def task_data(task_id: str, ds_id: str) -> dict[str, object]:
    """``data`` of a task.requested as an upstream system sends it: no tenant (its
    identity says it)."""
    return {"task_id": task_id, "name": "ICH via SDK", "flow": "general",
            "task_type": "classification", "dataset_id": ds_id,
            "model": {"mode": "manual", "network": "mobilenetv3_small_100", "pretrained": False}}


def signed(secret: str, headers: dict[str, str], body: bytes) -> dict[str, str]:
    msg_id = f"msg_{uuid.uuid4().hex}"
    stamp = datetime.fromtimestamp(int(time.time()), UTC)
    return {**headers, "webhook-id": msg_id, "webhook-timestamp": str(int(stamp.timestamp())),
            "webhook-signature": Webhook(secret).sign(msg_id, stamp, body.decode())}


async def reached(stack: Stack, task_id: str) -> TaskRecord:
    """The task's record once enrich has answered; never a dead letter on the way."""
    tasks = await TaskRepo.open(stack.js)

    async def settled() -> TaskRecord | None:
        found = await tasks.get(task_id)
        return found[0] if found and found[0].state not in ("requested",) else None

    record = await wait_for(settled, 30, f"task {task_id} past requested")
    assert record.state == "ready", record
    assert await list_dead_letters(stack.js, None, task_id) == []
    assert await list_dead_letters(stack.js, "admission", stack.tenant) == []
    got = await stack.client.get(f"/v1/tasks/{task_id}")
    assert got.status == 200, await got.text()
    assert (await got.json())["state"] == "ready"
    return record


async def requested(js: JetStreamContext, task_id: str) -> TaskRequestedEvent:
    raw = await js.get_last_msg(TASKS_STREAM, f"tasks.requested.{task_id}")
    event = parse_event(raw.data or b"")
    assert isinstance(event, TaskRequestedEvent)
    return event


