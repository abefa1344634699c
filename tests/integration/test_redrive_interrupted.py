"""A redrive interrupted between its two publishes is finished by the next redrive.

``task.redriven`` (generation 2) got out, the re-published ``task.requested`` did
not (NATS error, Ctrl-C): the record waits in ``requested`` at generation 2 and
the letter is still in the DLQ. Redriving it again must send the missing event,
not skip the letter as "re-opened since".
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from nats.js.api import RawStreamMsg

from infra.bus import dead_letters as dlq
from infra.bus.dead_letters import generation_of
from infra.bus.topology import ENRICH, TASKS_STREAM, apply, connect
from infra.kv import TaskRepo
from infra.settings import Settings
from radtrain.oncall.dead_letter_ops import Redriver, list_dead_letters
from schemas.events import TaskRedriven, TaskRequestedEvent, encode_event
from schemas.record import TaskRecord
from tests.support.factories import request

pytestmark = pytest.mark.integration


async def test_a_second_redrive_finishes_an_interrupted_reopening(
        nats_server: str, tmp_path: Path) -> None:
    settings = Settings(nats_url=nats_server, store_dir=tmp_path / "store")
    nc, js = await connect(settings, "test-redrive-interrupted")
    try:
        await apply(js, settings)
        task_id = uuid.uuid4().hex
        original = TaskRequestedEvent(source="test", subject=task_id,
                                      data=request(task_id=task_id))
        raw = RawStreamMsg(subject=original.nats_subject, seq=1, data=encode_event(original),
                           headers={"Nats-Msg-Id": original.msg_id})
        built = dlq.build_dead_letter(dlq.Advisory("max_deliveries", TASKS_STREAM, ENRICH,
                                                   1, 5), raw, "store down")
        ack = await js.publish(built.subject, built.data, headers=built.headers)
        now = datetime.now(UTC)
        tasks = await TaskRepo.open(js)
        await tasks.upsert(task_id, lambda _: TaskRecord(
            task_id=task_id, tenant="default", name="n", state="requested", flow="general",
            dataset_id="ds", created_at=now, updated_at=now, generation=2,
            redrives=[TaskRedriven(task_id=task_id, by="alice", to_state="requested",
                                   from_state="failed", dead_letter_seq=ack.seq)]))
        [letter] = [x for x in await list_dead_letters(js) if x.seq == ack.seq]

        done = await (await Redriver.open(js, by="bob")).redrive(letter)

        assert done.action == "reopened", done.detail
        sent = await js.get_last_msg(TASKS_STREAM, f"tasks.requested.{task_id}")
        assert generation_of(sent.headers, sent.data or b"") == 2
        assert (sent.headers or {})["Nats-Msg-Id"] == f"{task_id}:requested:g2"
        assert ack.seq not in [x.seq for x in await list_dead_letters(js)]
    finally:
        await nc.close()
