"""Transport glue of the runner: one ``task.ready`` → trained, stored, reported, once.

Exactly one run per task (runner/ownership.py): each delivery first claims the
task on the KV ``runs`` ledger by compare-and-set, as a new attempt numbered
per task; a second ``task.ready`` for a running or finished task is acked and
ignored, and a redelivery after the run ended republishes what it recorded.
The attempt trains (resuming from the newest older attempt's checkpoint,
runner/checkpoint.py), checkpoints and uploads its artifacts only under its own
prefix ``runs/<task_id>/attempts/<attempt>/``, and
completes by one compare-and-set naming that attempt; only then is
``task.completed`` returned, which the subscriber (infra/bus/subscriber.py)
publishes (JetStream-acked) before it acks the message. A stale attempt that
wakes after its replacement finished fails that compare-and-set: it publishes
nothing and settles nothing, so what ``task.completed``, KV and the artifact
routes point to never changes.

How each way of stopping is settled:

* cancelled (``task.cancel_requested`` seen): checkpoint kept, ledger
  ``cancelled``, ``task.cancelled`` returned (published), message acked;
* shutdown (SIGTERM, preemption): checkpoint written, ledger ``preempted``
  (no failure counted), message nak'ed so that a runner resumes it at once;
* fenced (the ledger names a newer attempt): nothing written, nothing settled;
* a permanent error: ledger ``failed``, ``task.failed`` published, ``term``;
* an unexpected error: nak, and the redelivery counts it against
  ``runner_max_failures``; the attempt that spends the budget fails the task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import nats.errors

from imaging.reader import CaseReadError
from infra.bus.consumer import stream_seq
from infra.bus.subscriber import Delivery, publish_all
from infra.errors import Fenced, PermanentError, TransientError
from infra.store import StoreUnavailable
from runner import ownership
from runner.attempt import UNVERIFIED, Attempt, RunnerContext, cancel_request
from runner.checkpoint import Checkpointer, State
from runner.job import JobResult, run_job
from runner.ownership import Claimant, claim
from runner.progress import ProgressReporter
from runner.train import TrainingStopped
from schemas.events import (
    Envelope,
    TaskCancelled,
    TaskCancelledEvent,
    TaskCancelRequestedEvent,
    TaskCompleted,
    TaskCompletedEvent,
    TaskFailed,
    TaskFailedEvent,
    TaskReadyEvent,
    TaskStarted,
    TaskStartedEvent,
)
from schemas.runs import RunLedger

__all__ = ["RunnerContext", "handle_ready"]

log = logging.getLogger("radtrain.runner")
SOURCE = "radtrain/runner"
KV_ERRORS = (nats.errors.Error, TimeoutError)


async def handle_ready(event: TaskReadyEvent, delivery: Delivery, *,
                       ctx: RunnerContext) -> list[Envelope]:
    """Train one ``task.ready``: ``[task.completed]`` or ``[task.cancelled]`` to publish
    before the ack; ``task.started`` (and progress) are published on the way."""
    who = Claimant(task_id=event.task_id, seq=stream_seq(delivery.msg),
                   generation=event.taskgeneration, runner_id=ctx.runner_id,
                   max_failures=ctx.settings.runner_max_failures)
    decision = await claim(ctx.runs, who)
    ledger = decision.ledger
    if decision.action == "ignore":
        log.info("task %s: task.ready ignored (acked): %s", event.task_id, decision.reason)
        return []
    assert ledger is not None
    if decision.action == "republish":
        log.info("task %s: %s; publishing its outcome again", event.task_id, decision.reason)
        return [_outcome_event(event, ledger)]
    if decision.action == "fail":
        assert isinstance(ledger.outcome, TaskFailed)
        log.warning("task %s: %s; failure budget spent", event.task_id, decision.reason)
        await publish_all(ctx.js, [_outcome_event(event, ledger)])
        raise PermanentError(ledger.outcome.code, ledger.outcome.message)
    log.info("task %s: attempt %d claimed by %s (%s)", event.task_id, ledger.attempt,
             ctx.runner_id, decision.reason)
    return await Run(ctx, event, delivery, ledger.attempt).execute()


def _outcome_event(ready: TaskReadyEvent, ledger: RunLedger) -> Envelope:
    """The recorded end of a run as the event to (re)publish: same payload, same msg id."""
    carry: dict[str, Any] = {"source": SOURCE, "subject": ready.task_id, **ready.carry()}
    if ledger.committed is not None:
        return TaskCompletedEvent(data=ledger.committed, **carry)
    if isinstance(ledger.outcome, TaskFailed):
        return TaskFailedEvent(data=ledger.outcome, **carry)
    assert isinstance(ledger.outcome, TaskCancelled)
    return TaskCancelledEvent(data=ledger.outcome, **carry)


class Run:
    """One claimed attempt of one task: train, then settle through the ledger."""

    def __init__(self, ctx: RunnerContext, ready: TaskReadyEvent, delivery: Delivery,
                 attempt: int) -> None:
        self.ctx, self.ready, self.delivery, self.attempt = ctx, ready, delivery, attempt
        self.spec, self.task_id = ready.data, ready.task_id
        self.carry: dict[str, Any] = {"source": SOURCE, "subject": ready.task_id,
                                      **ready.carry()}

    async def transition(self, change: Any) -> RunLedger:
        """A compare-and-set naming this attempt; ``Fenced`` when the ledger names another."""
        try:
            done = await self.ctx.runs.transition(self.task_id, self.attempt,
                                                  self.ready.taskgeneration, change)
        except KV_ERRORS as exc:
            raise TransientError("kv_unavailable", f"runs ledger of {self.task_id}: {exc!r}",
                                 delay_s=2.0) from exc
        if done is None:
            raise Fenced(f"task {self.task_id}: attempt {self.attempt} no longer owns it")
        return done

    async def execute(self) -> list[Envelope]:
        cancel = await cancel_request(self.ctx.js, self.ready)
        if cancel is not None:  # cancelled before any runner trained it
            return await self.cancelled(cancel, None)
        sup = Attempt(self.delivery, self.ctx, self.ready, self.attempt)
        sup.start()  # heartbeats from here on: loading a large checkpoint takes a while
        try:
            ckpt = Checkpointer(self.ctx.store, self.spec,
                                self.ctx.settings.work_dir / self.task_id / "checkpoints",
                                sup.owns, attempt=self.attempt,
                                keep=self.ctx.settings.checkpoints_kept)
            resume = await asyncio.to_thread(ckpt.load)
            await publish_all(self.ctx.js, [TaskStartedEvent(data=TaskStarted(
                task_id=self.task_id, runner_id=self.ctx.runner_id, attempt=self.attempt,
                resumed_from_epoch=None if resume is None else int(resume["epoch"]),
                device=self.ctx.device), **self.carry)])
            result = await self.train(sup, ckpt, resume)
        finally:
            sup.stop()
        if isinstance(result, list):
            return result
        return await self.complete(result)

    async def complete(self, result: JobResult) -> list[Envelope]:
        """One compare-and-set names this attempt's artifacts; only then is it announced."""
        payload = TaskCompleted(task_id=self.task_id, metrics=result.metrics,
                                artifacts=result.artifacts, duration_s=result.duration_s,
                                attempt=self.attempt)
        await self.transition(ownership.completed(payload))
        log.info("task %s completed by attempt %d: %s", self.task_id, self.attempt,
                 result.metrics)
        return [TaskCompletedEvent(data=payload, **self.carry)]

    async def cancelled(self, request: TaskCancelRequestedEvent,
                        epoch: int | None) -> list[Envelope]:
        payload = TaskCancelled(task_id=self.task_id, by=request.data.by,
                                reason=request.data.reason, last_checkpoint_epoch=epoch,
                                attempt=self.attempt)
        await self.transition(ownership.ended(payload))
        log.info("task %s cancelled (checkpoint after epoch %s kept)", self.task_id, epoch)
        return [TaskCancelledEvent(data=payload, **self.carry)]

    async def fail(self, code: str, message: str, *, count_failure: bool = False) -> None:
        """Ledger ``failed`` (naming this attempt), then ``task.failed``; the caller terms."""
        payload = TaskFailed(task_id=self.task_id, code=code, message=message,
                             retryable=False, attempt=self.attempt)
        await self.transition(ownership.ended(payload, count_failure=count_failure))
        await publish_all(self.ctx.js, [TaskFailedEvent(data=payload, **self.carry)])

    async def preempt(self, why: str) -> TransientError:
        """A graceful stop: ledger ``preempted`` (no failure counted), then nak at once."""
        await self.transition(ownership.preempted)
        log.info("task %s: attempt %d preempted (%s)", self.task_id, self.attempt, why)
        return TransientError("shutdown", f"runner stopping ({why})", delay_s=1.0)

    async def train(self, sup: Attempt, ckpt: Checkpointer, resume: State | None
                    ) -> JobResult | list[Envelope]:
        """The job in a thread; the ``task.cancelled`` to publish when it was cancelled."""
        reporter = ProgressReporter(self.ctx.js, asyncio.get_running_loop(), self.task_id,
                                    SOURCE, self.ctx.settings.progress_interval_s,
                                    carry=self.ready.carry(), guard=sup.still_owns)
        started = time.monotonic()
        try:
            return await asyncio.to_thread(
                run_job, self.spec, self.ctx.store, self.ctx.settings, self.ctx.device,
                reporter.report, sup.should_stop, checkpointer=ckpt, resume=resume,
                attempt=self.attempt)
        except TrainingStopped as exc:
            return await self.stopped(sup, exc)
        except PermanentError as exc:
            await self.fail(exc.code, exc.message)
            raise
        except CaseReadError as exc:  # a case the import accepted no longer reads: permanent
            await self.fail(exc.code, exc.message)
            raise PermanentError(exc.code, exc.message) from exc
        except StoreUnavailable as exc:
            raise TransientError("store_unavailable", str(exc), delay_s=10.0) from exc
        except TransientError:
            raise
        except Exception as exc:
            err = await self.unexpected(sup, exc)
            if err is exc:
                raise
            raise err from exc
        finally:
            log.info("task %s attempt %d ran %.1fs", self.task_id, self.attempt,
                     time.monotonic() - started)

    async def stopped(self, sup: Attempt, exc: TrainingStopped) -> list[Envelope]:
        if exc.reason == "cancelled" and sup.cancel is not None:
            return await self.cancelled(sup.cancel, exc.checkpoint_epoch)
        if exc.reason == "fenced":
            raise Fenced(f"task {self.task_id}: attempt {self.attempt} superseded") from exc
        if exc.reason == UNVERIFIED:  # fail closed: no checkpoint was written blindly
            raise TransientError("ownership_unverified",
                                 f"task {self.task_id}: runs ledger unreachable; attempt "
                                 f"{self.attempt} stopped", delay_s=2.0) from exc
        raise await self.preempt(f"{exc.reason}; checkpoint after epoch "
                                 f"{exc.checkpoint_epoch}") from exc

    async def unexpected(self, sup: Attempt, exc: Exception) -> BaseException:
        """What an unexpected error becomes: fenced, a preemption, the last allowed
        failure (``task.failed``, term) or itself (nak; the redelivery counts it)."""
        if sup.reason == "fenced":
            return Fenced(f"task {self.task_id}: attempt {self.attempt} superseded")
        if self.ctx.shutdown.is_set():
            return await self.preempt("runner shutting down")
        limit = self.ctx.settings.runner_max_failures
        try:
            found = await self.ctx.runs.get(self.task_id)
        except KV_ERRORS:
            return exc  # the redelivery will count it
        if found is None or not found[0].names(self.attempt, self.ready.taskgeneration):
            return Fenced(f"task {self.task_id}: attempt {self.attempt} superseded")
        if not ownership.spends_budget(found[0], limit):
            return exc
        spent = ownership.budget_spent(found[0], found[0].failures + 1, limit,
                                       f"raised {exc!r}")
        await self.fail("unexpected", spent.message, count_failure=True)
        return PermanentError("unexpected", spent.message)
