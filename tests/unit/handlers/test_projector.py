from datetime import UTC, datetime, timedelta
from functools import reduce
from typing import cast

import pytest

from handlers.enrich import WeightsRef, enrich
from handlers.projector import RecordMissing, project
from schemas.common import ErrorDetail
from schemas.events import (
    Event,
    TaskCompleted,
    TaskCompletedEvent,
    TaskFailed,
    TaskFailedEvent,
    TaskProgress,
    TaskProgressEvent,
    TaskReadyEvent,
    TaskRejected,
    TaskRejectedEvent,
    TaskRequestedEvent,
    TaskStarted,
    TaskStartedEvent,
)
from schemas.record import TaskRecord
from tests.support.factories import dataset, request


class NoWeights:
    """A weight store that has none: every entry starts from random init."""

    def find(self, entry_id: str) -> WeightsRef | None:
        return None


T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(s: int) -> datetime:
    return T0 + timedelta(seconds=s)


def requested() -> TaskRequestedEvent:
    return TaskRequestedEvent(source="g", subject="t1", data=request(), time=at(0))


def ready() -> TaskReadyEvent:
    return TaskReadyEvent(source="h", subject="t1", time=at(1),
                          data=enrich(request(), dataset(), NoWeights()))


def started(attempt: int = 1) -> TaskStartedEvent:
    return TaskStartedEvent(source="r", subject="t1", time=at(2 + attempt),
                            data=TaskStarted(task_id="t1", runner_id=f"r{attempt}",
                                             attempt=attempt))


def progress(epoch: int, step: int) -> TaskProgressEvent:
    return TaskProgressEvent(source="r", subject="t1", time=at(10 + step), data=TaskProgress(
        task_id="t1", epoch=epoch, epochs=2, step=step, total_steps=20, loss=0.5))


def completed() -> TaskCompletedEvent:
    return TaskCompletedEvent(source="r", subject="t1", time=at(100), data=TaskCompleted(
        task_id="t1", metrics={"auc": 0.95}, artifacts=[], duration_s=42.0))


def failed() -> TaskFailedEvent:
    return TaskFailedEvent(source="r", subject="t1", time=at(100), data=TaskFailed(
        task_id="t1", code="boom", message="x", retryable=False))


def run(events: list[Event]) -> TaskRecord | None:
    def step(rec: TaskRecord | None, ev: Event) -> TaskRecord | None:
        new = project(rec, ev)
        return rec if new is None else new
    return reduce(step, events, None)


def test_happy_path() -> None:
    rec = run([requested(), ready(), started(), progress(0, 5), completed()])
    assert rec is not None and rec.state == "completed"
    assert rec.metrics == {"auc": 0.95} and rec.network == "mobilenetv3_small_100.lamb_in1k"
    assert rec.progress is not None and rec.progress.step == 5
    assert rec.updated_at == at(100)


def test_duplicates_change_nothing() -> None:
    once = run([requested(), ready(), started(), completed()])
    assert once is not None and once.state == "completed" and once.updated_at == at(100)
    for dup in (requested(), ready(), started(), completed(), failed()):
        assert project(once, dup) is None


def test_state_never_moves_backwards_under_reordering() -> None:
    rec = run([requested(), ready(), started(), completed(), started(2), progress(1, 9)])
    assert rec is not None and rec.state == "completed" and rec.attempt == 1


def test_older_progress_is_ignored() -> None:
    rec = run([requested(), ready(), started(), progress(1, 12), progress(0, 3)])
    assert rec is not None and rec.progress is not None and rec.progress.step == 12


def test_newer_attempt_takes_over_a_running_task() -> None:
    rec = run([requested(), ready(), started(1), started(2)])
    assert rec is not None and rec.attempt == 2 and rec.runner_id == "r2"


def test_rejected_keeps_every_error() -> None:
    errs = [ErrorDetail(field="a", code="x", message="m"),
            ErrorDetail(field="b", code="y", message="n")]
    rej = TaskRejectedEvent(source="h", subject="t1",
                            data=TaskRejected(task_id="t1", tenant="default", errors=errs))
    rec = run([requested(), rej, ready()])
    assert rec is not None and rec.state == "rejected" and rec.errors == errs


def test_ready_before_requested_creates_the_record() -> None:
    rec = run([ready(), requested()])
    assert rec is not None and rec.state == "ready"


def test_event_without_record_is_retried_later() -> None:
    with pytest.raises(RecordMissing):
        project(None, started())


def test_failure_is_terminal() -> None:
    rec = run([requested(), ready(), started(), failed(), completed()])
    assert rec is not None and rec.state == "failed" and rec.errors[0].code == "boom"


def test_cancellation_is_recorded_then_terminal() -> None:
    from schemas.events import (
        TaskCancelled,
        TaskCancelledEvent,
        TaskCancelRequested,
        TaskCancelRequestedEvent,
    )

    req = TaskCancelRequestedEvent(source="g", subject="t1", time=at(20),
                                   data=TaskCancelRequested(task_id="t1", by="alice"))
    done = TaskCancelledEvent(source="r", subject="t1", time=at(30),
                              data=TaskCancelled(task_id="t1", by="alice",
                                                 last_checkpoint_epoch=1))
    rec = run([requested(), ready(), started(), req])
    assert rec is not None and rec.state == "running" and rec.cancel_requested
    rec = run([requested(), ready(), started(), req, done, completed()])
    assert rec is not None and rec.state == "cancelled"


# --- terminal states and generations: every (state, event) pair -------------------

ALL_STATES = ("requested", "ready", "rejected", "running", "completed", "failed", "cancelled")
EVENT_KINDS = ("requested", "ready", "rejected", "started", "progress", "completed", "failed",
               "cancel_requested", "cancelled", "redriven")
TERMINAL = ("rejected", "completed", "failed", "cancelled")


def record(state: str, generation: int = 1) -> TaskRecord:
    rec = run([requested()])
    assert rec is not None
    return rec.model_copy(update={"state": state, "generation": generation,
                                  "attempt": 1 if state == "running" else 0})


def redriven(generation: int, to_state: str = "requested", by: str = "oncall") -> Event:
    from schemas.events import TaskRedriven, TaskRedrivenEvent

    return TaskRedrivenEvent(source="cli", subject="t1", time=at(200), taskgeneration=generation,
                             data=TaskRedriven(task_id="t1", by=by, reason="fixed",
                                               to_state=to_state, from_state="failed"))


def event_of(kind: str, generation: int = 1) -> Event:
    from schemas.events import (
        TaskCancelled,
        TaskCancelledEvent,
        TaskCancelRequested,
        TaskCancelRequestedEvent,
    )

    if kind == "redriven":
        return redriven(generation)
    built = {
        "requested": requested, "ready": ready, "started": started, "completed": completed,
        "failed": failed, "progress": lambda: progress(0, 1),
        "rejected": lambda: TaskRejectedEvent(source="h", subject="t1", time=at(1), data=(
            TaskRejected(task_id="t1", tenant="default",
                         errors=[ErrorDetail(field="f", code="c", message="m")]))),
        "cancel_requested": lambda: TaskCancelRequestedEvent(
            source="g", subject="t1", time=at(20),
            data=TaskCancelRequested(task_id="t1", by="alice")),
        "cancelled": lambda: TaskCancelledEvent(source="r", subject="t1", time=at(30), data=(
            TaskCancelled(task_id="t1", by="alice", last_checkpoint_epoch=None))),
    }[kind]()
    return cast(Event, built.model_copy(update={"taskgeneration": generation}))


# What the record's state becomes; None: the event changes nothing.
LIVE: dict[str, dict[str, str | None]] = {
    "requested": {"requested": None, "ready": "ready", "rejected": "rejected",
                  "started": "running", "progress": None, "completed": "completed",
                  "failed": "failed", "cancel_requested": "requested",
                  "cancelled": "cancelled", "redriven": None},
    "ready": {"requested": None, "ready": None, "rejected": None, "started": "running",
              "progress": None, "completed": "completed", "failed": "failed",
              "cancel_requested": "ready", "cancelled": "cancelled", "redriven": None},
    "running": {"requested": None, "ready": None, "rejected": None, "started": None,
                "progress": "running", "completed": "completed", "failed": "failed",
                "cancel_requested": "running", "cancelled": "cancelled", "redriven": None},
}
EXPECTED = LIVE | {s: dict.fromkeys(EVENT_KINDS) for s in TERMINAL}


@pytest.mark.parametrize("state", ALL_STATES)
@pytest.mark.parametrize("kind", EVENT_KINDS)
def test_every_state_and_event_of_the_same_generation(state: str, kind: str) -> None:
    """Same generation: forward only, and the four terminal states never move."""
    new = project(record(state), event_of(kind))
    expected = EXPECTED[state][kind]
    assert (new.state if new else None) == expected, (state, kind)
    if new is not None:
        assert new.generation == 1


@pytest.mark.parametrize("state", ALL_STATES)
@pytest.mark.parametrize("kind", EVENT_KINDS)
def test_events_of_an_older_generation_change_nothing(state: str, kind: str) -> None:
    assert project(record(state, generation=3), event_of(kind, generation=2)) is None


@pytest.mark.parametrize("state", ALL_STATES)
def test_a_newer_redriven_reopens_any_state(state: str) -> None:
    rec = record(state).model_copy(update={
        "cancel_requested": True, "errors": [ErrorDetail(field="task", code="dead_letter",
                                                         message="enrich gave up")],
        "progress": progress(0, 3).data})
    new = project(rec, redriven(2, to_state="ready", by="alice"))
    assert new is not None and new.state == "ready" and new.generation == 2
    assert [r.by for r in new.redrives] == ["alice"] and new.redrives[0].to_state == "ready"
    assert not new.cancel_requested and new.progress is None
    assert [e.code for e in new.errors] == ["dead_letter"]  # the history stays


@pytest.mark.parametrize("kind", [k for k in EVENT_KINDS if k not in ("requested", "ready",
                                                                       "redriven")])
def test_an_event_ahead_of_its_redriven_waits_for_it(kind: str) -> None:
    from handlers.projector import GenerationAhead

    with pytest.raises(GenerationAhead):
        project(record("failed"), event_of(kind, generation=2))


def test_rejected_then_ready_and_started_stays_rejected() -> None:
    rej = event_of("rejected")
    rec = run([requested(), rej, ready(), started(), progress(0, 1), completed()])
    assert rec is not None and rec.state == "rejected" and rec.attempt == 0


def test_redrive_of_a_failed_task_runs_its_new_generation_to_the_end() -> None:
    """Enrich dead-lettered (task failed), on-call redrives: generation 2 reaches ready,
    runs and completes; a late copy of generation 1 changes nothing."""
    gen2 = [event_of(k, generation=2) for k in ("requested", "ready", "started", "completed")]
    rec = run([requested(), failed(), redriven(2), *gen2, failed()])
    assert rec is not None and rec.state == "completed" and rec.generation == 2
    assert len(rec.redrives) == 1 and rec.redrives[0].from_state == "failed"
    assert [e.code for e in rec.errors] == ["boom"]
    assert project(rec, redriven(2)) is None  # the same redrive again
    again = project(rec, redriven(3))
    assert again is not None and again.state == "requested" and len(again.redrives) == 2


def test_a_redriven_requested_before_any_record_starts_it_at_that_generation() -> None:
    rec = project(None, event_of("requested", generation=2))
    assert rec is not None and rec.generation == 2 and rec.state == "requested"
