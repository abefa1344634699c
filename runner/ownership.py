"""Exactly one run per task: who owns a ``task.ready``, decided on the KV ``runs`` ledger.

:func:`decide` is pure: given the task's :class:`RunLedger` (or none), the stream
sequence of the ``task.ready`` being delivered and its ``taskgeneration``, it says

- ``claim``: train, as a new attempt (numbered per task, never reused);
- ``ignore``: ack and log one line (another ``task.ready`` of a task that is
  running or finished, or an event of an older generation);
- ``republish``: the run already ended (a redelivery after the commit): publish
  the recorded completion / failure / cancellation again, then ack;
- ``fail``: this message's failure budget (``runner_max_failures``) is spent:
  publish ``task.failed`` and ``term``.

The same message delivered again while its run is ``running`` means the
previous attempt crashed or stalled past the ack wait: one failure, and a new
attempt claims it (which fences the stalled one). ``preempted`` (a graceful
stop) costs no failure. A newer generation claims afresh. :func:`claim` writes
the decision by compare-and-set on the revision; a lost race re-reads and
decides again. Every later change (preempted, completed, failed, cancelled)
is a compare-and-set naming the attempt (``RunRepo.transition``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import nats.errors

from infra.errors import KVConflict, TransientError
from infra.kv import RunRepo
from schemas.events import TaskCancelled, TaskCompleted, TaskFailed
from schemas.runs import FINISHED_RUN_STATES, RunLedger

log = logging.getLogger("radtrain.runner")

Action = Literal["claim", "ignore", "republish", "fail"]
CLAIM_ROUNDS = 10
BUDGET_SPENT = "runner_failures"


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    ledger: RunLedger | None
    """``claim`` / ``fail``: the record to write; otherwise the current one (if any)."""

    @property
    def attempt(self) -> int:
        return self.ledger.attempt if self.ledger is not None else 0


@dataclass(frozen=True)
class Claimant:
    """Who asks: the message, its generation, this runner and its failure budget."""

    task_id: str
    seq: int | None
    generation: int
    runner_id: str
    max_failures: int


def _now() -> datetime:
    return datetime.now(UTC)


def _claim(who: Claimant, attempt: int, failures: int, preemptions: int,
           reason: str) -> Decision:
    return Decision("claim", reason, RunLedger(
        task_id=who.task_id, generation=who.generation, attempt=attempt, owner_seq=who.seq,
        runner_id=who.runner_id, state="running", failures=failures, preemptions=preemptions,
        updated_at=_now()))


def decide(current: RunLedger | None, who: Claimant) -> Decision:
    """What to do with one delivery of a ``task.ready`` (see the module docstring)."""
    if current is None:
        return _claim(who, 1, 0, 0, "first attempt")
    if who.generation < current.generation:
        return Decision("ignore", f"generation {who.generation} is older than the run's "
                                  f"{current.generation}", current)
    if who.generation > current.generation:
        return _claim(who, current.attempt + 1, 0, 0, f"generation {who.generation}")
    if who.seq is None or who.seq != current.owner_seq:
        return Decision("ignore", f"another task.ready (seq {who.seq}); attempt "
                                  f"{current.attempt} of seq {current.owner_seq} is "
                                  f"{current.state}", current)
    if current.state in FINISHED_RUN_STATES:
        found = current.committed or current.outcome
        return Decision("republish" if found is not None else "ignore",
                        f"attempt {current.attempt} already {current.state}", current)
    if current.state == "preempted":
        return _claim(who, current.attempt + 1, current.failures, current.preemptions,
                      f"attempt {current.attempt} was preempted")
    failures = current.failures + 1  # running: that attempt crashed or stalled
    if failures >= who.max_failures:
        return Decision("fail", f"attempt {current.attempt} crashed or stalled",
                        current.model_copy(update={
                            "state": "failed", "failures": failures, "updated_at": _now(),
                            "outcome": budget_spent(current, failures, who.max_failures)}))
    return _claim(who, current.attempt + 1, failures, current.preemptions,
                  f"attempt {current.attempt} crashed or stalled ({failures} failure(s))")


def budget_spent(current: RunLedger, failures: int, limit: int,
                 detail: str = "crashed or stalled") -> TaskFailed:
    return TaskFailed(task_id=current.task_id, code=BUDGET_SPENT, retryable=False,
                      attempt=current.attempt,
                      message=f"{failures} attempt(s) of this task failed (the last one "
                              f"{detail}); runner_max_failures is {limit}")


def spends_budget(current: RunLedger, limit: int) -> bool:
    """An attempt that ends in an unexpected error: is it the last one allowed?"""
    return current.failures + 1 >= limit


async def claim(runs: RunRepo, who: Claimant) -> Decision:
    """Decide on the ledger and write a claim or failure by compare-and-set; a lost race
    re-reads and decides again. KV unreachable: a transient error (nak, retry)."""
    try:
        for _ in range(CLAIM_ROUNDS):
            found = await runs.get(who.task_id)
            current, revision = found if found is not None else (None, 0)
            decision = decide(current, who)
            if decision.action not in ("claim", "fail"):
                return decision
            assert decision.ledger is not None
            if await runs.compare_and_set(decision.ledger, revision) is not None:
                return decision
    except (nats.errors.Error, TimeoutError) as exc:
        raise TransientError("kv_unavailable", f"runs ledger of {who.task_id}: {exc!r}",
                             delay_s=2.0) from exc
    raise KVConflict("runs", who.task_id, CLAIM_ROUNDS)


async def owner_status(runs: RunRepo, task_id: str, attempt: int,
                       generation: int) -> str | None:
    """None while the ledger names this attempt as the running owner; else why not:
    ``finished`` (this attempt's run ended) or ``newer_attempt``. Raises when the
    ledger cannot be read: callers fail closed."""
    found = await runs.get(task_id)
    if found is None:
        return "newer_attempt"
    ledger = found[0]
    if ledger.names(attempt, generation):
        return None
    if ledger.attempt == attempt and ledger.state in FINISHED_RUN_STATES:
        return "finished"
    return "newer_attempt"


# --- the changes an attempt makes to its own record (RunRepo.transition) ---------------


def preempted(ledger: RunLedger) -> RunLedger:
    return ledger.model_copy(update={"state": "preempted",
                                     "preemptions": ledger.preemptions + 1,
                                     "updated_at": _now()})


def completed(payload: TaskCompleted) -> Callable[[RunLedger], RunLedger]:
    return lambda ledger: ledger.model_copy(update={
        "state": "completed", "committed": payload, "updated_at": _now()})


def ended(payload: TaskFailed | TaskCancelled, *,
          count_failure: bool = False) -> Callable[[RunLedger], RunLedger]:
    state = "failed" if isinstance(payload, TaskFailed) else "cancelled"
    return lambda ledger: ledger.model_copy(update={
        "state": state, "outcome": payload, "updated_at": _now(),
        "failures": ledger.failures + (1 if count_failure else 0)})
