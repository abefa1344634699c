"""Fault: a poison message reaches the DLQ after max_deliver and its consumer keeps flowing.

Real nats-server, the real handlers process code (in this process). The
poison is a request whose dataset record in KV is corrupt: enrich fails with
an unexpected error on every delivery. Retry delays are scaled down (x0.1),
the schedule and max_deliver are the production ones.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from handlers.app import run as run_handlers
from infra.bus import dead_letters as dlq
from infra.bus.topology import ENRICH, RETRY_DELAYS_S, TASKS_STREAM, apply, connect
from infra.kv import DatasetRepo, TaskRepo
from infra.settings import Settings
from radtrain.oncall.dead_letter_ops import list_dead_letters
from schemas.events import TaskFailedEvent, TaskRequestedEvent, encode_event, parse_event
from tests.faults.helpers import fault_settings, wait_for
from tests.support.factories import dataset, request
from tests.support.nats_users import start_authenticated_nats

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

GOOD = 20


@pytest.fixture(scope="module")
def bus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    users = start_authenticated_nats(tmp_path_factory.mktemp("nats-poison"), port=0,
                                     sync_always=False)
    yield users.services_url
    users.stop()


@pytest.fixture
async def handlers(bus: str, tmp_path: Path) -> AsyncIterator[tuple[Settings, JetStreamContext]]:
    settings = fault_settings(tmp_path, nats_url=bus, retry_delay_scale=0.1)
    nc, js = await connect(settings, "test-poison")
    await apply(js, settings)
    stop = asyncio.Event()
    task = asyncio.create_task(run_handlers(settings, stop))
    yield settings, js
    stop.set()
    await asyncio.wait_for(task, 15)
    await nc.close()


async def _submit(js: JetStreamContext, dataset_id: str) -> str:
    task_id = uuid.uuid4().hex
    event = TaskRequestedEvent(source="test", subject=task_id,
                               data=request(task_id=task_id, dataset_id=dataset_id))
    await js.publish(event.nats_subject, encode_event(event), headers={"Nats-Msg-Id": event.msg_id})
    return task_id


async def test_poison_is_dead_lettered_while_others_flow(
        handlers: tuple[Settings, JetStreamContext]) -> None:
    _, js = handlers
    await (await DatasetRepo.open(js)).put(dataset(id="ds-ok"))
    await (await js.key_value("datasets")).put("ds-corrupt", b"{not a summary")
    poison = await _submit(js, "ds-corrupt")
    started = time.monotonic()
    good = [await _submit(js, "ds-ok") for _ in range(GOOD)]
    repo = await TaskRepo.open(js)

    async def all_ready() -> float | None:
        states = [await repo.get(t) for t in good]
        done = all(s is not None and s[0].state == "ready" for s in states)
        return time.monotonic() if done else None

    good_done = await wait_for(all_ready, 30, "the good tasks to become ready")

    async def dead_letter() -> list[dlq.StoredDeadLetter]:
        return await list_dead_letters(js, ENRICH, poison)

    letters = await wait_for(dead_letter, 30, "the poison's dead letter")
    dead_at = time.monotonic()
    # The good ones did not wait for the poison's ~5 s of retries.
    assert good_done < dead_at, "the consumer stalled behind the poison message"
    assert good_done - started < (dead_at - started) / 2 + 2

    [letter] = letters
    info = (await js.consumer_info(TASKS_STREAM, ENRICH)).config
    assert letter.get(dlq.H_REASON) == "max_deliveries"
    assert int(letter.get(dlq.H_DELIVERIES)) == info.max_deliver == len(RETRY_DELAYS_S[ENRICH]) + 1
    assert letter.get(dlq.H_SUBJECT) == f"tasks.requested.{poison}"
    original = await js.get_msg(TASKS_STREAM, int(letter.get(dlq.H_SEQ)))
    assert original.data == letter.data and original.subject == letter.get(dlq.H_SUBJECT)
    assert letter.get(dlq.H_CONSUMER) == ENRICH
    assert "unexpected" in letter.get(dlq.H_ERROR) and "DatasetSummary" in letter.get(dlq.H_ERROR)
    assert letter.get(dlq.H_MSG_ID) == f"{poison}:requested"

    async def failed() -> object:
        found = await repo.get(poison)
        return found if found and found[0].state == "failed" else None

    record = (await wait_for(failed, 15, "the poison task to be marked failed"))[0]  # type: ignore[index]
    assert record.errors[-1].code == "dead_letter"
    assert "enrich gave up after 5 deliveries" in record.errors[-1].message

    state = await js.consumer_info(TASKS_STREAM, ENRICH)
    assert state.num_ack_pending == 0 and state.num_pending == 0, state
    print(f"{GOOD} good tasks ready after {good_done - started:.1f}s; poison dead-lettered "
          f"after {dead_at - started:.1f}s and {letter.get(dlq.H_DELIVERIES)} deliveries")


async def test_unreadable_event_goes_to_dlq_at_once(
        handlers: tuple[Settings, JetStreamContext]) -> None:
    """A message no handler can parse is terminated with a dead-letter reason: one delivery,
    and the task its subject names fails."""
    _, js = handlers
    orphan = uuid.uuid4().hex
    ack = await js.publish(f"tasks.progress.{orphan}", b"\x00not json at all")

    async def dead_letter() -> list[dlq.StoredDeadLetter]:
        return await list_dead_letters(js, "projector", orphan)

    [letter] = await wait_for(dead_letter, 15, "the projector's dead letter")
    assert letter.get(dlq.H_REASON) == "terminated"
    assert letter.get(dlq.H_DELIVERIES) == "1" and letter.get(dlq.H_SEQ) == str(ack.seq)
    assert letter.get(dlq.H_ERROR).startswith("invalid_event")
    assert json.dumps(letter.summary())  # printable by `radtrain dlq list --json`
    # Its subject names a task: that task is marked failed, once, whoever read it first.
    failed = parse_event((await js.get_last_msg(TASKS_STREAM, f"tasks.failed.{orphan}")).data
                         or b"")
    assert isinstance(failed, TaskFailedEvent) and failed.data.code == "invalid_event"
