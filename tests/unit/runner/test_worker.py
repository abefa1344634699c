"""``handle_ready`` on fakes: claims, duplicates, republishing, preemption and the failure
budget through the runs ledger, and the CloudEvents extensions carried on every event.

The training itself (``run_job``) is replaced by a stub: what is under test is what the
worker decides and publishes around it (tests/e2e/test_resume.py runs the real thing).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest

from infra.bus.consumer import RetryPlan
from infra.bus.subscriber import Delivery
from infra.errors import PermanentError, TransientError
from infra.kv import RunRepo
from infra.settings import Settings
from infra.store import LocalStore
from runner import worker
from runner.attempt import RunnerContext
from runner.checkpoint import Checkpointer, checkpoint_key, stored_attempts
from runner.job import JobResult
from runner.train import ProgressUpdate, TrainingStopped
from schemas.events import (
    Artifact,
    Envelope,
    TaskCompletedEvent,
    TaskFailedEvent,
    TaskReadyEvent,
)
from schemas.runs import RunLedger
from tests.support.fake_bus import FakeJetStream, FakeMsg
from tests.unit.runner.test_checkpoint_resume import tiny_spec
from tests.unit.runner.test_ownership import runs_repo

TASK = "task-w"
SEQ = 50


class World:
    def __init__(self, tmp_path: Path, job: Callable[..., JobResult], **settings: Any) -> None:
        self.js = FakeJetStream()
        self.runs: RunRepo = runs_repo()
        self.ctx = RunnerContext(
            settings=Settings(work_dir=tmp_path / "work", cache_dir=tmp_path / "cache",
                              runner_id="r-unit", **settings),
            js=self.js.as_js(), tasks=cast(Any, None), runs=self.runs,
            store=LocalStore(tmp_path / "store"), device="cpu", shutdown=threading.Event())
        self.job = job

    def ready(self, generation: int = 1) -> TaskReadyEvent:
        return TaskReadyEvent(source="radtrain/enrich", subject=TASK, taskgeneration=generation,
                              upstreamref="up-7", data=tiny_spec().model_copy(
                                  update={"task_id": TASK}))

    async def handle(self, event: TaskReadyEvent, seq: int = SEQ,
                     delivery_count: int = 1) -> list[Envelope]:
        msg = FakeMsg(event.nats_subject, b"", attempt=delivery_count, seq=seq)
        delivery = Delivery(subject=event.nats_subject, attempt=delivery_count,
                            plan=RetryPlan(), msg=msg.as_msg())
        return await worker.handle_ready(event, delivery, ctx=self.ctx)

    async def ledger(self) -> RunLedger:
        found = await self.runs.get(TASK)
        assert found is not None
        return found[0]

    def names(self) -> list[str]:
        return [p.event().name for p in self.js.published]


@pytest.fixture
def stub_job(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[..., JobResult]], None]:
    def install(job: Callable[..., JobResult]) -> None:
        monkeypatch.setattr(worker, "run_job", job)
    return install


def trained(spec: Any, store: Any, settings: Any, device: str, on_progress: Any,
            should_stop: Any, *, attempt: int, **_: Any) -> JobResult:
    on_progress(ProgressUpdate(1, 2, 4, 8, 0.5, {"auc": 0.7}, None, None, epoch_end=True))
    key = f"runs/{spec.task_id}/attempts/{attempt}/metrics.json"
    return JobResult(metrics={"auc": 0.7}, duration_s=0.1, artifacts=[
        Artifact(name="metrics.json", key=key, uri=f"file:///{key}", sha256="c" * 64, size=2)])


def raising(exc: BaseException) -> Callable[..., JobResult]:
    def job(*args: Any, **kwargs: Any) -> JobResult:
        raise exc
    return job


async def settle_progress() -> None:
    for _ in range(20):  # the progress send hops thread -> loop -> KV guard -> publish
        await asyncio.sleep(0.01)


async def test_a_run_carries_the_ready_events_extensions_on_every_event(
        tmp_path: Path, stub_job: Any) -> None:
    stub_job(trained)
    w = World(tmp_path, trained)
    out = await w.handle(w.ready(generation=2))
    await settle_progress()
    assert [e.name for e in out] == ["completed"]
    done = out[0]
    assert isinstance(done, TaskCompletedEvent) and done.data.attempt == 1
    assert done.msg_id == f"{TASK}:completed:g2"
    events = [p.event() for p in w.js.published] + out
    assert [e.name for e in events] == ["started", "progress", "completed"]
    for event in events:
        assert event.extensions == {"upstreamref": "up-7"}, event.name
        assert event.taskgeneration == 2, event.name
    ledger = await w.ledger()
    assert (ledger.state, ledger.attempt, ledger.owner_seq) == ("completed", 1, SEQ)
    assert ledger.committed == done.data


async def test_duplicates_are_ignored_and_a_redelivery_republishes_the_commit(
        tmp_path: Path, stub_job: Any) -> None:
    stub_job(trained)
    w = World(tmp_path, trained)
    first = await w.handle(w.ready())
    await settle_progress()
    before = len(w.js.published)
    assert await w.handle(w.ready(), seq=SEQ + 1) == []  # another task.ready: acked, ignored
    again = await w.handle(w.ready(), seq=SEQ, delivery_count=2)  # the ack was lost
    assert [(e.type, e.data) for e in again] == [(e.type, e.data) for e in first]
    assert again[0].msg_id == first[0].msg_id  # the same fact: the stream drops the copy
    assert again[0].extensions == first[0].extensions
    assert len(w.js.published) == before  # no second task.started: no second run
    assert (await w.ledger()).attempt == 1


async def test_sigterm_preempts_without_spending_the_failure_budget(
        tmp_path: Path, stub_job: Any) -> None:
    stub_job(raising(TrainingStopped("shutdown", 1)))
    w = World(tmp_path, trained, runner_max_failures=1)
    for n in range(1, 6):
        with pytest.raises(TransientError) as err:
            await w.handle(w.ready(), delivery_count=n)
        assert err.value.code == "shutdown" and err.value.delay_s <= 1.0
    ledger = await w.ledger()
    assert (ledger.state, ledger.attempt, ledger.preemptions, ledger.failures) == (
        "preempted", 5, 5, 0)
    stub_job(trained)
    out = await w.handle(w.ready(), delivery_count=6)
    assert [e.name for e in out] == ["completed"] and out[0].data.attempt == 6
    assert [p.event().data.attempt for p in w.js.on("tasks.started")] == [1, 2, 3, 4, 5, 6]


async def test_unexpected_errors_count_until_the_budget_is_spent(
        tmp_path: Path, stub_job: Any) -> None:
    stub_job(raising(RuntimeError("CUDA error: an illegal memory access")))
    w = World(tmp_path, trained, runner_max_failures=3)
    with pytest.raises(RuntimeError):  # nak: the redelivery counts it
        await w.handle(w.ready(), delivery_count=1)
    with pytest.raises(RuntimeError):
        await w.handle(w.ready(), delivery_count=2)
    assert ((await w.ledger()).attempt, (await w.ledger()).failures) == (2, 1)
    with pytest.raises(PermanentError) as err:  # the third failure: task.failed, term
        await w.handle(w.ready(), delivery_count=3)
    assert err.value.code == "unexpected" and "runner_max_failures is 3" in err.value.message
    ledger = await w.ledger()
    assert (ledger.state, ledger.attempt, ledger.failures) == ("failed", 3, 3)
    failed = [p.event() for p in w.js.on("tasks.failed")]
    assert len(failed) == 1 and isinstance(failed[0], TaskFailedEvent)
    assert failed[0].data.attempt == 3 and failed[0].extensions == {"upstreamref": "up-7"}
    assert await w.handle(w.ready(), delivery_count=4) != []  # republished, then acked


async def test_a_crash_loop_fails_the_task_on_the_redelivery(
        tmp_path: Path, stub_job: Any) -> None:
    """Attempts that die without a word (kill -9, OOM) are counted by the next delivery."""
    w = World(tmp_path, trained, runner_max_failures=2)
    await w.runs.compare_and_set(RunLedger(
        task_id=TASK, attempt=4, owner_seq=SEQ, runner_id="r-dead", state="running",
        failures=1, preemptions=3, updated_at=datetime.now(UTC)), 0)
    with pytest.raises(PermanentError) as err:
        await w.handle(w.ready(), delivery_count=9)
    assert err.value.code == "runner_failures"
    assert w.names() == ["failed"]  # no attempt started
    assert (await w.ledger()).state == "failed"


async def test_each_attempt_checkpoints_under_its_own_key_and_resumes_the_previous(
        tmp_path: Path, stub_job: Any) -> None:
    """The worker hands the job a checkpointer of this attempt (fenced by it, pruning to
    ``checkpoints_kept``) and the state of the newest older attempt's checkpoint."""
    seen: list[tuple[int, str, int | None]] = []

    def job(spec: Any, store: Any, settings: Any, device: str, on_progress: Any,
            should_stop: Any, *, checkpointer: Checkpointer, resume: Any, attempt: int,
            **_: Any) -> JobResult:
        seen.append((attempt, checkpointer.key, None if resume is None else resume["epoch"]))
        assert checkpointer.save({"epoch": attempt * 10})
        raise TrainingStopped("shutdown", attempt * 10)

    stub_job(job)
    w = World(tmp_path, trained, checkpoints_kept=1)
    for n in (1, 2):
        with pytest.raises(TransientError):
            await w.handle(w.ready(), delivery_count=n)
    assert seen == [(1, checkpoint_key(TASK, 1), None), (2, checkpoint_key(TASK, 2), 10)]
    assert stored_attempts(w.ctx.store, TASK) == [2]  # kept: 1
    assert [p.event().data.resumed_from_epoch for p in w.js.on("tasks.started")] == [None, 10]
