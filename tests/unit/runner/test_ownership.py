"""Exactly one run per task: the ledger's decision table, the claim by compare-and-set,
and the fence that fails closed (runner/ownership.py, runner/attempt.py).

The KV is the in-memory bucket of tests/support/fake_kv.py (its parity with a real
bucket is checked in tests/integration/test_kv_fake_parity.py).
"""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import nats.errors
import pytest
from nats.js.kv import KeyValue

from infra.errors import Fenced, TransientError
from infra.kv import KVRepository, RunRepo
from infra.settings import Settings
from infra.store import LocalStore
from runner import ownership
from runner.attempt import UNVERIFIED, Attempt, RunnerContext
from runner.checkpoint import Checkpointer, checkpoint_key
from runner.job import JobResult
from runner.ownership import Claimant, claim, decide
from runner.worker import Run
from schemas.events import Artifact, TaskCompleted, TaskFailed, TaskReadyEvent
from schemas.runs import RunLedger
from tests.support.fake_kv import FakeKeyValue
from tests.unit.runner.test_checkpoint_resume import tiny_spec

TASK = "task-1"
SEQ = 40
NOW = datetime(2026, 1, 2, tzinfo=UTC)


def who(seq: int | None = SEQ, generation: int = 1, runner: str = "r-new",
        max_failures: int = 3) -> Claimant:
    return Claimant(task_id=TASK, seq=seq, generation=generation, runner_id=runner,
                    max_failures=max_failures)


def ledger(state: str = "running", attempt: int = 2, failures: int = 0, preemptions: int = 0,
           generation: int = 1, seq: int = SEQ, **extra: Any) -> RunLedger:
    return RunLedger(task_id=TASK, generation=generation, attempt=attempt, owner_seq=seq,
                     runner_id="r-old", state=state,  # type: ignore[arg-type]
                     failures=failures, preemptions=preemptions, updated_at=NOW, **extra)


def done(attempt: int = 2) -> TaskCompleted:
    return TaskCompleted(task_id=TASK, metrics={"auc": 0.9}, duration_s=1.0, attempt=attempt,
                         artifacts=[Artifact(name="model.safetensors", key=f"runs/{TASK}/"
                                             f"attempts/{attempt}/model.safetensors",
                                             uri="file:///x", sha256="a" * 64, size=3)])


def runs_repo(kv: Any = None) -> RunRepo:
    return RunRepo(KVRepository(cast(KeyValue, kv or FakeKeyValue("runs")), RunLedger, "runs"))


# --- the decision table -----------------------------------------------------------------


def test_the_first_delivery_claims_attempt_one() -> None:
    d = decide(None, who())
    assert d.action == "claim" and d.ledger is not None
    assert (d.attempt, d.ledger.state, d.ledger.owner_seq, d.ledger.failures) == (
        1, "running", SEQ, 0)
    assert d.ledger.runner_id == "r-new" and d.ledger.generation == 1


@pytest.mark.parametrize("state", ["running", "preempted", "completed", "failed", "cancelled"])
def test_another_ready_message_of_the_same_generation_is_ignored(state: str) -> None:
    """A second task.ready (new msg id, a replay, an upstream retry) never starts a run."""
    current = ledger(state, committed=done() if state == "completed" else None)
    d = decide(current, who(seq=SEQ + 7))
    assert d.action == "ignore" and d.ledger == current  # nothing written, attempt unchanged
    assert f"seq {SEQ + 7}" in d.reason and state in d.reason


def test_the_same_message_while_running_is_a_crash_and_fences_the_old_attempt() -> None:
    d = decide(ledger("running", attempt=2, failures=1, preemptions=4), who())
    assert d.action == "claim" and d.ledger is not None
    assert (d.attempt, d.ledger.failures, d.ledger.preemptions) == (3, 2, 4)
    assert d.ledger.runner_id == "r-new" and d.ledger.state == "running"


def test_the_crash_that_spends_the_budget_fails_the_task() -> None:
    d = decide(ledger("running", attempt=3, failures=2), who(max_failures=3))
    assert d.action == "fail" and d.ledger is not None
    assert (d.ledger.state, d.ledger.failures, d.ledger.attempt) == ("failed", 3, 3)
    assert isinstance(d.ledger.outcome, TaskFailed)
    assert d.ledger.outcome.code == ownership.BUDGET_SPENT and not d.ledger.outcome.retryable
    assert "runner_max_failures is 3" in d.ledger.outcome.message


def test_preemptions_never_spend_the_failure_budget() -> None:
    """Five graceful stops in a row, each resumed as the next attempt, no failure."""
    current = ledger("running", attempt=1)
    for n in range(5):
        current = ownership.preempted(current)
        d = decide(current, who(max_failures=1))
        assert d.action == "claim" and d.ledger is not None, n
        current = d.ledger
    assert (current.attempt, current.failures, current.preemptions) == (6, 0, 5)


def test_a_redelivery_after_the_commit_republishes_the_recorded_outcome() -> None:
    completed = ledger("completed", committed=done())
    d = decide(completed, who())
    assert d.action == "republish" and d.ledger is not None and d.ledger.committed == done()
    failed = ledger("failed", outcome=TaskFailed(task_id=TASK, code="x", message="y",
                                                 retryable=False, attempt=2))
    assert decide(failed, who()).action == "republish"
    assert decide(ledger("failed"), who()).action == "ignore"  # nothing recorded to repeat


def test_generations_older_ones_are_ignored_newer_ones_claim_afresh() -> None:
    current = ledger("failed", attempt=4, failures=3, generation=2, seq=SEQ)
    assert decide(current, who(generation=1)).action == "ignore"
    d = decide(current, who(seq=SEQ + 100, generation=3))
    assert d.action == "claim" and d.ledger is not None
    assert (d.attempt, d.ledger.generation, d.ledger.failures, d.ledger.owner_seq) == (
        5, 3, 0, SEQ + 100)  # attempt numbers are never reused across generations
    assert d.ledger.committed is None and d.ledger.outcome is None


def test_a_delivery_without_a_stream_sequence_never_takes_over() -> None:
    assert decide(ledger("running"), who(seq=None)).action == "ignore"


# --- the claim, by compare-and-set --------------------------------------------------------


async def test_concurrent_ready_messages_make_one_claim() -> None:
    kv = FakeKeyValue("runs")
    runs = runs_repo(kv)
    got = await asyncio.gather(*(claim(runs, who(seq=SEQ + i, runner=f"r{i}"))
                                 for i in range(5)))
    assert sorted(d.action for d in got) == ["claim", "ignore", "ignore", "ignore", "ignore"]
    found = await runs.get(TASK)
    assert found is not None and found[0].attempt == 1
    assert kv.conflicts >= 1  # the losers re-read and decided again


async def test_transitions_name_the_attempt_and_fence_a_stale_one() -> None:
    runs = runs_repo()
    first = await claim(runs, who())
    again = await claim(runs, who(runner="r-b"))  # the same message: attempt 1 stalled
    assert (first.attempt, again.attempt) == (1, 2)
    assert await runs.transition(TASK, 1, 1, ownership.completed(done(1))) is None
    won = await runs.transition(TASK, 2, 1, ownership.completed(done(2)))
    assert won is not None and won.state == "completed" and won.committed == done(2)
    assert await runs.transition(TASK, 2, 1, ownership.preempted) is None  # finished
    assert (await claim(runs, who())).action == "republish"


class UnreachableKV(FakeKeyValue):
    """A bucket behind a NATS connection that is down."""

    async def get(self, key: str, revision: int | None = None,
                  validate_keys: bool = True) -> KeyValue.Entry:
        raise nats.errors.NoRespondersError


async def test_a_claim_with_the_kv_unreachable_is_transient() -> None:
    with pytest.raises(TransientError) as err:
        await claim(runs_repo(UnreachableKV()), who())
    assert err.value.code == "kv_unavailable"


# --- the fence that guards every checkpoint write ------------------------------------------


def attempt_of(tmp_path: Path, runs: RunRepo, attempt: int = 1) -> Attempt:
    settings = Settings(data_dir=tmp_path, work_dir=tmp_path / "work", runner_id="r-test")
    ctx = RunnerContext(settings=settings, js=cast(Any, None), tasks=cast(Any, None), runs=runs,
                        store=LocalStore(tmp_path / "store"), device="cpu",
                        shutdown=threading.Event())
    ready = TaskReadyEvent(source="test", subject=TASK,
                           data=tiny_spec().model_copy(update={"task_id": TASK}))
    return Attempt(cast(Any, None), ctx, ready, attempt)


async def write_checkpoint(sup: Attempt) -> bool:
    ckpt = Checkpointer(sup.ctx.store, sup.ready.data, sup.ctx.settings.work_dir, sup.owns,
                        attempt=sup.attempt)
    return await asyncio.to_thread(ckpt.save, {"epoch": 1})  # owns() asks from a thread


async def test_nats_down_during_the_ownership_check_stops_the_write(tmp_path: Path) -> None:
    sup = attempt_of(tmp_path, runs_repo(UnreachableKV()))
    assert await write_checkpoint(sup) is False
    assert not sup.ctx.store.exists(checkpoint_key(TASK, 1))  # nothing written blindly
    assert sup.should_stop() == UNVERIFIED  # the attempt stops (a transient error, nak)


async def test_the_owner_writes_and_a_replaced_attempt_is_fenced(tmp_path: Path) -> None:
    runs = runs_repo()
    await claim(runs, who())
    owner = attempt_of(tmp_path, runs, attempt=1)
    assert await write_checkpoint(owner) is True and owner.should_stop() is None
    assert owner.ctx.store.exists(checkpoint_key(TASK, 1))
    await claim(runs, who())  # redelivered after the ack wait: attempt 2 takes over
    assert await write_checkpoint(owner) is False and owner.should_stop() == "fenced"


async def test_a_stale_attempt_that_trained_to_the_end_commits_nothing(tmp_path: Path) -> None:
    """It uploaded under its own prefix; its completion names attempt 1 and loses."""
    runs = runs_repo()
    await claim(runs, who())
    await claim(runs, who())  # attempt 1 stalled past the ack wait: attempt 2 owns the task
    assert await runs.transition(TASK, 2, 1, ownership.completed(done(2))) is not None
    stale = attempt_of(tmp_path, runs, attempt=1)
    run = Run(stale.ctx, stale.ready, cast(Any, None), attempt=1)
    mine = done(1)
    with pytest.raises(Fenced):
        await run.complete(JobResult(metrics=mine.metrics, artifacts=mine.artifacts,
                                     duration_s=1.0))
    found = await runs.get(TASK)
    assert found is not None and found[0].committed == done(2)  # what the task points to
