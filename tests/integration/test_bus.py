"""Streams, consumers and the handlers against a real nats-server with JetStream."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg, StorageType
from nats.js.errors import NotFoundError

from handlers.app import run as run_handlers
from infra.bus import dead_letters as dlq
from infra.bus.topology import (
    DISPATCH_STREAM,
    DISPATCHER,
    ENRICH,
    TASKS_STREAM,
    apply,
    connect,
    consumer_configs,
    runner_consumer,
)
from infra.kv import DatasetRepo, TaskRepo
from infra.settings import Settings
from radtrain.oncall.dead_letter_ops import list_dead_letters
from schemas.events import TaskFailedEvent, TaskRequestedEvent, encode_event, parse_event
from tests.faults.helpers import wait_for
from tests.support.factories import dataset, request

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(nats_server: str, tmp_path: Path) -> Settings:
    return Settings(nats_url=nats_server, store_dir=tmp_path / "store")


@pytest.fixture
async def handlers(settings: Settings) -> AsyncIterator[None]:
    nc, js = await connect(settings, "test-apply")
    await apply(js, settings)
    await nc.close()
    stop = asyncio.Event()
    task = asyncio.create_task(run_handlers(settings, stop))
    yield
    stop.set()
    await asyncio.wait_for(task, 15)


async def test_apply_twice_changes_nothing(settings: Settings) -> None:
    nc, js = await connect(settings, "test-apply")
    try:
        await apply(js, settings)
        second = await apply(js, settings)
        assert {c.action for c in second} == {"unchanged"}
        assert {c.name for c in second} >= {"TASKS", "DLQ", "DISPATCH", "enrich", "dispatch",
                                            "runner-cpu", "projector", "tasks", "datasets",
                                            "webhooks", "runners"}
        info = await js.stream_info(TASKS_STREAM)
        assert info.config.storage == StorageType.FILE
        assert info.config.duplicate_window is not None and info.config.duplicate_window >= 120
        runner = await js.consumer_info(DISPATCH_STREAM, "runner-cpu")
        assert runner.config.max_deliver == consumer_configs(settings)["runner-cpu"].max_deliver
        assert runner.config.filter_subject == "dispatch.cpu.*"
    finally:
        await nc.close()


async def _await_outcome(nc: nats.NATS, task_id: str, publish: object) -> dict:
    """Subscribe to the task's history before publishing, return the enrich outcome."""
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_msg(msg: nats.aio.msg.Msg) -> None:
        if msg.subject.split(".")[1] in ("ready", "rejected", "failed"):
            await got.put(msg.data)

    sub = await nc.subscribe(f"tasks.*.{task_id}", cb=on_msg)
    try:
        await publish  # type: ignore[misc]
        return json.loads(await asyncio.wait_for(got.get(), 20))
    finally:
        await sub.unsubscribe()


async def test_requested_yields_ready_and_record(settings: Settings, handlers: None) -> None:
    nc, js = await connect(settings, "test-client")
    try:
        ds_id = f"ds{uuid.uuid4().hex[:8]}"
        await (await DatasetRepo.open(js)).put(dataset(id=ds_id))
        task_id = uuid.uuid4().hex
        event = TaskRequestedEvent(source="test", subject=task_id,
                                   data=request(task_id=task_id, dataset_id=ds_id))
        pub = js.publish(event.nats_subject, encode_event(event),
                         headers={"Nats-Msg-Id": event.msg_id})
        out = await _await_outcome(nc, task_id, pub)
        assert out["type"] == "radtrain.task.ready.v1", out
        spec = parse_event(json.dumps(out)).data
        assert spec.dataset.dataset_id == ds_id  # type: ignore[union-attr]
        repo = await TaskRepo.open(js)
        for _ in range(100):
            found = await repo.get(task_id)
            if found and found[0].state == "ready":
                break
            await asyncio.sleep(0.1)
        assert found is not None and found[0].state == "ready"
    finally:
        await nc.close()


async def test_unknown_dataset_and_network_are_rejected_together(
        settings: Settings, handlers: None) -> None:
    nc, js = await connect(settings, "test-client")
    try:
        task_id = uuid.uuid4().hex
        event = TaskRequestedEvent(source="test", subject=task_id, data=request(
            task_id=task_id, dataset_id="missing",
            model={"mode": "manual", "network": "resnet9000"}))
        out = await _await_outcome(nc, task_id, js.publish(event.nats_subject,
                                                           encode_event(event)))
        assert out["type"] == "radtrain.task.rejected.v1"
        assert {e["code"] for e in out["data"]["errors"]} == {"dataset_not_found",
                                                              "unknown_network"}
    finally:
        await nc.close()


async def _dead_letter(js: JetStreamContext, consumer: str, task_id: str
                       ) -> dlq.StoredDeadLetter:
    async def letters() -> list[dlq.StoredDeadLetter]:
        return await list_dead_letters(js, consumer, task_id)

    [letter] = await wait_for(letters, 20, f"the {consumer} dead letter of {task_id}")
    return letter


async def test_malformed_upstream_event_is_dead_lettered_and_fails_its_task(
        settings: Settings, handlers: None) -> None:
    """An upstream system publishing straight to NATS: its task fails naming the field,
    and the message is kept in DLQ for a person (one policy for every consumer)."""
    nc, js = await connect(settings, "test-client")
    try:
        task_id = uuid.uuid4().hex
        good = json.loads(encode_event(TaskRequestedEvent(
            source="pacs-bridge", subject=task_id, data=request(task_id=task_id))))
        good["data"]["tuning"] = {"mode": "manual", "hyperparameters": {"batch_size": "big"}}
        out = await _await_outcome(nc, task_id, js.publish(
            f"tasks.requested.{task_id}", json.dumps(good).encode()))
        assert out["type"] == "radtrain.task.failed.v1", out
        assert (out["data"]["code"], out["data"]["retryable"]) == ("invalid_event", False)
        assert "batch_size" in out["data"]["message"], out["data"]["message"]
        letter = await _dead_letter(js, ENRICH, task_id)
        assert letter.get(dlq.H_REASON) == "terminated"
        assert letter.get(dlq.H_ERROR).startswith(f"invalid_event: tasks.requested.{task_id}")
        garbage = await _await_outcome(nc, task_id + "x", js.publish(
            f"tasks.requested.{task_id}x", b"{not json"))
        assert "json_invalid" in garbage["data"]["message"]
    finally:
        await nc.close()


async def test_malformed_ready_is_dead_lettered_by_the_dispatcher_and_fails_its_task(
        settings: Settings, handlers: None) -> None:
    """The same policy on the dispatcher (every task.ready goes through it first): a DLQ
    copy and a task.failed, once; nothing reaches a runner pool."""
    nc, js = await connect(settings, "test-client")
    try:
        task_id = uuid.uuid4().hex
        ack = await js.publish(f"tasks.ready.{task_id}", json.dumps(
            {"type": "radtrain.task.ready.v1", "subject": task_id, "data": {}}).encode())
        letter = await _dead_letter(js, DISPATCHER, task_id)
        assert letter.get(dlq.H_REASON) == "terminated" and letter.get(dlq.H_DELIVERIES) == "1"
        assert letter.get(dlq.H_SEQ) == str(ack.seq)
        assert letter.get(dlq.H_ERROR).startswith(f"invalid_event: tasks.ready.{task_id}")
        raw = await js.get_last_msg(TASKS_STREAM, f"tasks.failed.{task_id}")
        failed = parse_event(raw.data or b"")
        assert isinstance(failed, TaskFailedEvent) and not failed.data.retryable
        assert failed.data.code == "invalid_event"
        assert (raw.headers or {}).get("Nats-Msg-Id") == f"{task_id}:failed"
        await _dead_letter(js, "projector", task_id)
        info = await js.stream_info(TASKS_STREAM, subjects_filter=f"tasks.failed.{task_id}")
        # The projector dead-lettered it too: the task.failed is published once.
        assert info.state.subjects == {f"tasks.failed.{task_id}": 1}
        dispatched = await js.stream_info(DISPATCH_STREAM, subjects_filter=f"dispatch.*.{task_id}")
        assert not dispatched.state.subjects, dispatched.state.subjects
    finally:
        await nc.close()


async def test_malformed_dispatch_on_a_runner_is_dead_lettered_and_fails_its_task(
        settings: Settings, handlers: None) -> None:
    """A runner pool's consumer (on DISPATCH) dead-letters what it cannot read, and the
    forwarder fails the task its subject names."""
    from runner.app import run as run_runner  # torch: imported by this test only

    stop = asyncio.Event()
    runner = asyncio.create_task(run_runner(settings.model_copy(update={"device": "cpu"}), stop))
    nc, js = await connect(settings, "test-client")
    try:
        task_id = uuid.uuid4().hex
        await js.publish(f"dispatch.cpu.{task_id}", json.dumps(
            {"type": "radtrain.task.ready.v1", "subject": task_id, "data": {}}).encode())
        # The runner fails the task itself (a term on a work-queue stream removes the
        # message, so the dead letter cannot name it: see handlers/dead_letter_forwarder.py).
        raw = await wait_for_last(js, f"tasks.failed.{task_id}")
        failed = parse_event(raw.data or b"")
        assert isinstance(failed, TaskFailedEvent) and failed.data.code == "invalid_event"
        assert f"runner-cpu could not read dispatch.cpu.{task_id}" in failed.data.message
        async def letter() -> list[dlq.StoredDeadLetter]:
            return [x for x in await list_dead_letters(js, runner_consumer("cpu"))
                    if x.get(dlq.H_ERROR).startswith(f"invalid_event: dispatch.cpu.{task_id}")]

        await wait_for(letter, 20, f"the runner-cpu dead letter of {task_id}")
        state = await js.consumer_info(DISPATCH_STREAM, runner_consumer("cpu"))
        assert state.num_ack_pending == 0, state
    finally:
        stop.set()
        await asyncio.wait_for(runner, 15)
        await nc.close()


async def wait_for_last(js: JetStreamContext, subject: str,
                        timeout_s: float = 20.0) -> RawStreamMsg:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            return await js.get_last_msg(TASKS_STREAM, subject)
        except NotFoundError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)
