"""Transport glue of the runner: one ``task.ready`` → trained, stored, reported.

Order matters for "no data lost": artifacts are stored, then ``task.completed``
is returned, which the subscriber (infra/bus/subscriber.py) publishes
(JetStream-acked) before it acks the message. A crash
anywhere before the ack means redelivery; the redelivered attempt resumes from
the task's last checkpoint (``task.started`` says from which epoch), and the
fence (``runner.attempt``) makes a redelivery of a finished task a no-op and
stops an older attempt that a newer one has replaced.

How each way of stopping is settled:

* cancelled (``task.cancel_requested`` seen): checkpoint kept, ``task.cancelled``
  returned (published), message acked;
* shutdown (SIGTERM): checkpoint written, message nak'ed so that a runner
  resumes it at once;
* fenced (a newer attempt owns the task): nothing written, nothing settled.
"""

from __future__ import annotations

import asyncio
import logging
import time

from imaging.reader import CaseReadError
from infra.bus.subscriber import Delivery, publish_all
from infra.errors import Fenced, PermanentError, Superseded, TransientError
from infra.store import StoreUnavailable
from runner.attempt import Attempt, RunnerContext, cancel_request, fence, ownership
from runner.checkpoint import Checkpointer, State
from runner.job import JobResult, checkpointer_for, run_job
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
from schemas.spec import TrainingSpec

__all__ = ["RunnerContext", "fence", "handle_ready"]

log = logging.getLogger("radtrain.runner")
SOURCE = "radtrain/runner"


async def _publish(ctx: RunnerContext, event: Envelope) -> None:
    """Publish during the run (started, failed): a failure is transient (nak, retry)."""
    await publish_all(ctx.js, [event])


async def _check_owner(ctx: RunnerContext, task_id: str, attempt: int) -> None:
    why = await ownership(ctx, task_id, attempt)
    if why == "finished":
        raise Superseded(f"task {task_id} already finished")
    if why == "newer_attempt":
        raise Fenced(f"task {task_id}: a newer attempt than {attempt} owns it")


async def handle_ready(event: TaskReadyEvent, delivery: Delivery, *,
                       ctx: RunnerContext) -> list[Envelope]:
    """Train one ``task.ready``: ``[task.completed]`` or ``[task.cancelled]`` to publish
    before the ack; ``task.started`` (and progress) are published on the way."""
    spec, attempt = event.data, delivery.attempt
    await _check_owner(ctx, spec.task_id, attempt)
    cancel = await cancel_request(ctx.js, spec.task_id)
    if cancel is not None:  # cancelled before any runner started it
        return [_cancelled(spec, attempt, cancel, None)]
    sup = Attempt(delivery, ctx, spec.task_id)
    sup.start()  # heartbeats from here on: loading a large checkpoint takes a while
    try:
        ckpt = checkpointer_for(ctx.store, spec, ctx.settings, sup.owns)
        resume = await asyncio.to_thread(ckpt.load)
        resumed = None if resume is None else int(resume["epoch"])
        await _publish(ctx, TaskStartedEvent(source=SOURCE, subject=spec.task_id,
                                             data=TaskStarted(
            task_id=spec.task_id, runner_id=ctx.settings.runner_id, attempt=attempt,
            resumed_from_epoch=resumed, device=ctx.device)))
        result = await _train(ctx, sup, spec, delivery, ckpt, resume)
    finally:
        sup.stop()
    if isinstance(result, TaskCancelledEvent):
        return [result]
    await _check_owner(ctx, spec.task_id, attempt)  # a stalled attempt must not complete
    log.info("task %s completed: %s", spec.task_id, result.metrics)
    return [TaskCompletedEvent(source=SOURCE, subject=spec.task_id, data=TaskCompleted(
        task_id=spec.task_id, metrics=result.metrics, artifacts=result.artifacts,
        duration_s=result.duration_s, attempt=attempt))]


async def _train(ctx: RunnerContext, sup: Attempt, spec: TrainingSpec, delivery: Delivery,
                 ckpt: Checkpointer, resume: State | None) -> JobResult | TaskCancelledEvent:
    """The job in a thread; the ``task.cancelled`` to publish when it was cancelled."""
    attempt = delivery.attempt
    reporter = ProgressReporter(ctx.js, asyncio.get_running_loop(), spec.task_id, SOURCE,
                                ctx.settings.progress_interval_s)
    started = time.monotonic()
    try:
        return await asyncio.to_thread(
            run_job, spec, ctx.store, ctx.settings, ctx.device, reporter.report,
            sup.should_stop, checkpointer=ckpt, resume=resume)
    except TrainingStopped as exc:
        if exc.reason == "cancelled" and sup.cancel is not None:
            return _cancelled(spec, attempt, sup.cancel, exc.checkpoint_epoch)
        if exc.reason == "fenced":
            raise Fenced(f"task {spec.task_id}: attempt {attempt} superseded") from exc
        raise TransientError("shutdown", f"runner stopping ({exc.reason}); checkpoint after "
                                         f"epoch {exc.checkpoint_epoch}", delay_s=1.0) from exc
    except PermanentError as exc:
        await _fail(ctx, spec, attempt, exc.code, exc.message, retryable=False)
        raise
    except CaseReadError as exc:  # a case the import accepted no longer reads: permanent
        await _fail(ctx, spec, attempt, exc.code, exc.message, retryable=False)
        raise PermanentError(exc.code, exc.message) from exc
    except StoreUnavailable as exc:
        raise TransientError("store_unavailable", str(exc), delay_s=10.0) from exc
    except TransientError:
        raise
    except Exception as exc:
        if sup.reason == "fenced":
            raise Fenced(f"task {spec.task_id}: attempt {attempt} superseded") from exc
        if ctx.shutdown.is_set():
            raise TransientError("shutdown", "runner shutting down", delay_s=1.0) from exc
        if delivery.plan.is_last(attempt):  # the consumer's max_deliver, read from the server
            await _fail(ctx, spec, attempt, "unexpected", repr(exc), retryable=False)
            raise PermanentError("unexpected", repr(exc)) from exc
        raise
    finally:
        log.info("task %s attempt %d ran %.1fs", spec.task_id, attempt,
                 time.monotonic() - started)


def _cancelled(spec: TrainingSpec, attempt: int, request: TaskCancelRequestedEvent,
               epoch: int | None) -> TaskCancelledEvent:
    log.info("task %s cancelled (checkpoint after epoch %s kept)", spec.task_id, epoch)
    return TaskCancelledEvent(source=SOURCE, subject=spec.task_id, data=TaskCancelled(
        task_id=spec.task_id, by=request.data.by, reason=request.data.reason,
        last_checkpoint_epoch=epoch, attempt=attempt))


async def _fail(ctx: RunnerContext, spec: TrainingSpec, attempt: int, code: str, message: str,
                retryable: bool) -> None:
    await _publish(ctx, TaskFailedEvent(source=SOURCE, subject=spec.task_id, data=TaskFailed(
        task_id=spec.task_id, code=code, message=message, retryable=retryable, attempt=attempt)))
