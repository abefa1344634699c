"""On-call re-opening, pure parts: the events a redrive publishes, which tasks a replay
refuses or re-opens, what ``dlq redrive`` does with each letter, generation-aware
``finished`` and the forwarder's ``task.failed`` of a redriven task."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from nats.js.api import RawStreamMsg

from handlers.dead_letter_forwarder import failure_event
from infra.bus import dead_letters as dlq
from radtrain.oncall.dead_letter_ops import judge
from radtrain.oncall.reopen import reopening
from radtrain.oncall.replay import plan
from schemas.events import (
    Envelope,
    TaskCompleted,
    TaskCompletedEvent,
    TaskRedrivenEvent,
    TaskRequestedEvent,
    encode_event,
)
from schemas.record import TaskRecord
from tests.support.factories import request

TASK = "t1"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def record(state: str, generation: int = 1, task_id: str = TASK) -> TaskRecord:
    return TaskRecord(task_id=task_id, tenant="default", name="n", state=state,  # type: ignore[arg-type]
                      flow="general", dataset_id="ds", created_at=T0, updated_at=T0,
                      generation=generation)


def requested(generation: int = 1, task_id: str = TASK) -> TaskRequestedEvent:
    return TaskRequestedEvent(source="pacs", subject=task_id, data=request(task_id=task_id),
                              traceparent=TRACE, taskgeneration=generation,
                              **{"ward": "7"})


def msg(event: Envelope, seq: int) -> RawStreamMsg:
    return RawStreamMsg(subject=event.nats_subject, seq=seq, data=encode_event(event),
                        headers={"Nats-Msg-Id": event.msg_id})


# --- the two events of a re-opening ------------------------------------------------


def test_reopening_publishes_redriven_then_the_event_of_the_next_generation() -> None:
    original = requested()
    plan_ = reopening(record("failed", generation=3), original, by="alice", reason="fixed",
                      dead_letter_seq=12)
    red, again = plan_.redriven, plan_.event
    assert isinstance(red, TaskRedrivenEvent) and plan_.generation == 4
    assert red.nats_subject == f"tasks.redriven.{TASK}" and red.msg_id == f"{TASK}:redriven:g4"
    assert (red.data.by, red.data.reason, red.data.to_state, red.data.from_state,
            red.data.dead_letter_seq) == ("alice", "fixed", "requested", "failed", 12)
    assert isinstance(again, TaskRequestedEvent) and again.taskgeneration == 4
    assert again.msg_id == f"{TASK}:requested:g4" != original.msg_id
    assert again.data == original.data and again.id != original.id
    assert again.extensions == red.extensions == {"ward": "7"}
    assert again.traceparent == red.traceparent == TRACE


def test_only_requested_or_ready_reopen_a_task() -> None:
    done = TaskCompletedEvent(source="r", subject=TASK, data=TaskCompleted(
        task_id=TASK, metrics={}, artifacts=[], duration_s=1.0))
    with pytest.raises(ValueError, match=r"task\.requested or task\.ready"):
        reopening(record("completed"), done, by="alice")
    with pytest.raises(ValueError, match="of task"):
        reopening(record("failed", task_id="other"), requested(), by="alice")


# --- replay: copy, refuse, or re-open ----------------------------------------------


def test_replay_of_running_or_ended_tasks_is_refused_and_publishes_nothing() -> None:
    msgs = [msg(requested(task_id=t), seq) for seq, t in enumerate(("a", "b", "c"), 1)]
    records = {"a": None, "b": record("requested", task_id="b"),
               "c": record("running", task_id="c")}
    out = plan(msgs, records, force=False)
    assert out.refused and "task c is running (generation 1)" in out.refused[0]
    assert "--force" in out.refused[0] and not out.reopen
    for state in ("completed", "failed", "cancelled", "rejected"):
        assert plan(msgs, records | {"c": record(state, task_id="c")}, force=False).refused


def test_forced_replay_reopens_from_the_requested_and_copies_the_others() -> None:
    ready_like = RawStreamMsg(subject="tasks.started.c", seq=10, data=b"{}", headers={})
    msgs = [msg(requested(task_id="a"), 1), msg(requested(task_id="c"), 9), ready_like]
    out = plan(msgs, {"a": None, "c": record("completed", generation=2, task_id="c")},
               force=True)
    assert not out.refused and [m.seq for m in out.copies] == [1]
    [(rec, chosen)] = out.reopen
    assert rec.generation == 2 and chosen.seq == 9
    assert out.left_out == ["task c: 1 other selected event(s) of generation 2 not re-published"]
    only_started = plan([ready_like], {"c": record("failed", task_id="c")}, force=True)
    assert only_started.refused and "--type requested" in only_started.refused[0]


# --- dlq redrive: what each letter gets --------------------------------------------


def letter(consumer: str = dlq.ENRICH, event: Envelope | None = None,
           seq: int = 5) -> dlq.StoredDeadLetter:
    original = event or requested()
    adv = dlq.Advisory("max_deliveries", "TASKS", consumer, 3, 5)
    built = dlq.build_dead_letter(adv, msg(original, 3), "store down")
    return dlq.StoredDeadLetter(seq=seq, time=T0, subject=built.subject, data=built.data,
                                headers=built.headers)


@pytest.mark.parametrize(("state", "ended", "force", "action"), [
    ("failed", "failed", False, "reopened"),
    ("requested", None, False, "reopened"),      # the record lags the forwarder's failed
    ("running", "failed", False, "reopened"),    # the stream says failed: KV lags
    ("completed", "completed", False, "skipped"),
    ("cancelled", "cancelled", False, "skipped"),
    ("running", None, False, "skipped"),
    ("completed", "completed", True, "reopened"),
])
def test_a_task_owner_letter_reopens_a_failed_task(state: str, ended: str | None,
                                                   force: bool, action: str) -> None:
    ev = requested()
    got, why = judge(letter(event=ev), ev, record(state), ended, force=force)
    assert got == action, why
    if action == "skipped":
        assert TASK in why and (ended or state) in why


def test_stale_unreadable_unrecorded_and_other_consumers_letters() -> None:
    ev = requested()
    stale, why = judge(letter(event=ev), ev, record("failed", generation=2), "failed",
                       force=False)
    assert stale == "skipped" and "re-opened since (generation 2)" in why
    assert judge(letter(), None, record("failed"), "failed", force=False)[0] == "skipped"
    assert judge(letter(), None, record("ready"), None, force=False)[0] == "republished"
    no_rec = judge(letter(event=ev), ev, None, "failed", force=False)
    assert no_rec[0] == "skipped" and "no record" in no_rec[1]
    assert judge(letter("projector"), ev, record("completed"), "completed",
                 force=False)[0] == "republished"


# --- generations in the dead-letter contract ---------------------------------------


def test_the_forwarders_failure_is_of_the_letters_generation_with_its_extensions() -> None:
    adv = dlq.Advisory("max_deliveries", "TASKS", dlq.ENRICH, 3, 5)
    built = dlq.build_dead_letter(adv, msg(requested(generation=2), 3), "down")
    failed = failure_event(adv, built, "down")
    assert failed is not None and failed.taskgeneration == 2
    assert failed.msg_id == f"{TASK}:failed:g2" and failed.extensions == {"ward": "7"}


class Stream:
    """``get_last_msg`` over a dict subject -> event (the one call ``finished`` makes)."""

    def __init__(self, events: dict[str, Any]) -> None:
        self.events = events

    async def get_last_msg(self, stream: str, subject: str) -> RawStreamMsg:
        from nats.js.errors import NotFoundError

        if subject not in self.events:
            raise NotFoundError
        return RawStreamMsg(subject=subject, seq=1, headers={},
                            data=json.dumps(self.events[subject]).encode())


async def test_finished_counts_only_terminal_events_of_the_generation() -> None:
    js: Any = Stream({f"tasks.failed.{TASK}": {"taskgeneration": 1},
                      f"tasks.completed.{TASK}": {"taskgeneration": 2}})
    assert await dlq.finished(js, TASK) == "completed"
    assert await dlq.finished(js, TASK, generation=2) == "completed"
    assert await dlq.finished(js, TASK, generation=3) is None
    js.events.pop(f"tasks.completed.{TASK}")
    assert await dlq.finished(js, TASK, generation=2) is None
    assert await dlq.finished(js, TASK, generation=1) == "failed"
