from datetime import UTC, datetime, timedelta
from functools import reduce

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
