"""Transport glue of the runner: one ``task.ready`` → trained, stored, reported.

Order matters for "no data lost": artifacts are stored, then ``task.completed``
is published (JetStream-acked), and only then is the message acked. A crash
anywhere before the ack means redelivery, and the fence below makes that
redelivery a no-op when the task already finished.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from infra.errors import PermanentError, Superseded, TransientError
from infra.events import publish_event
from infra.jetstream import TASKS_STREAM
from infra.kv import TaskRepo
from infra.settings import Settings
from infra.store import ObjectStore, StoreUnavailable
from runner.job import JobResult, run_job
from runner.progress import ProgressReporter
from schemas.events import (
    Envelope,
    TaskCompleted,
    TaskCompletedEvent,
    TaskFailed,
    TaskFailedEvent,
    TaskReadyEvent,
    TaskStarted,
    TaskStartedEvent,
    parse_event,
)
from schemas.record import TERMINAL_STATES
from schemas.spec import TrainingSpec

log = logging.getLogger("radtrain.runner")
SOURCE = "radtrain/runner"
MAX_DELIVER = 3


@dataclass
class RunnerContext:
    settings: Settings
    js: JetStreamContext
    tasks: TaskRepo
    store: ObjectStore
    device: str
    shutdown: threading.Event = field(default_factory=threading.Event)


async def _publish(ctx: RunnerContext, event: Envelope) -> None:
    try:
        await publish_event(ctx.js, event)
    except (nats.errors.Error, TimeoutError) as exc:
        raise TransientError("publish_failed", str(exc)) from exc


async def _finished_in_stream(js: JetStreamContext, task_id: str) -> str | None:
    """The stream, not the (possibly lagging) KV projection, says whether a task ended."""
    for name in ("completed", "failed", "cancelled"):
        try:
            await js.get_last_msg(TASKS_STREAM, f"tasks.{name}.{task_id}")
            return name
        except NotFoundError:
            continue
    return None


async def fence(ctx: RunnerContext, task_id: str, attempt: int) -> bool:
    """True while this attempt still owns the task (DESIGN.md §4)."""
    if await _finished_in_stream(ctx.js, task_id):
        return False
    found = await ctx.tasks.get(task_id)
    if found is None:
        return True
    rec = found[0]
    return rec.state not in TERMINAL_STATES and not (rec.state == "running"
                                                     and rec.attempt > attempt)


async def _keep_alive(msg: Msg, ctx: RunnerContext, spec: TrainingSpec, attempt: int,
                      stop: threading.Event) -> None:
    """Heartbeat the ack deadline and stop the job if a newer attempt took over."""
    while not stop.is_set():
        await asyncio.sleep(ctx.settings.heartbeat_s)
        try:
            await msg.in_progress()
            if not await fence(ctx, spec.task_id, attempt):
                log.warning("task %s: a newer attempt owns it; stopping", spec.task_id)
                stop.set()
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("heartbeat for %s failed: %r", spec.task_id, exc)


def _attempt(msg: Msg) -> int:
    return int(msg.metadata.num_delivered or 1)


async def handle_ready(msg: Msg, ctx: RunnerContext) -> None:
    try:
        event = parse_event(msg.data)
    except ValidationError as exc:
        raise PermanentError("invalid_event", f"{msg.subject}: {exc}") from exc
    if not isinstance(event, TaskReadyEvent):
        raise PermanentError("invalid_event", f"{msg.subject}: not a task.ready")
    spec, attempt = event.data, _attempt(msg)
    if not await fence(ctx, spec.task_id, attempt):
        raise Superseded(f"task {spec.task_id} finished or owned by a newer attempt")
    await _publish(ctx, TaskStartedEvent(source=SOURCE, subject=spec.task_id, data=TaskStarted(
        task_id=spec.task_id, runner_id=ctx.settings.runner_id, attempt=attempt,
        device=ctx.device)))
    result = await _train(msg, ctx, spec, attempt)
    await _publish(ctx, TaskCompletedEvent(source=SOURCE, subject=spec.task_id, data=TaskCompleted(
        task_id=spec.task_id, metrics=result.metrics, artifacts=result.artifacts,
        duration_s=result.duration_s, attempt=attempt)))
    log.info("task %s completed: %s", spec.task_id, result.metrics)


async def _train(msg: Msg, ctx: RunnerContext, spec: TrainingSpec, attempt: int) -> JobResult:
    stop = threading.Event()
    loop = asyncio.get_running_loop()
    reporter = ProgressReporter(ctx.js, loop, spec.task_id, SOURCE,
                                ctx.settings.progress_interval_s)
    heartbeat = asyncio.create_task(_keep_alive(msg, ctx, spec, attempt, stop))
    started = time.monotonic()
    try:
        return await asyncio.to_thread(
            run_job, spec, ctx.store, ctx.settings, ctx.device, reporter.report,
            lambda: stop.is_set() or ctx.shutdown.is_set())
    except PermanentError as exc:
        await _fail(ctx, spec, attempt, exc.code, exc.message, retryable=False)
        raise
    except StoreUnavailable as exc:
        raise TransientError("store_unavailable", str(exc), delay_s=10.0) from exc
    except TransientError:
        raise
    except Exception as exc:
        if stop.is_set():
            raise Superseded(f"task {spec.task_id}: stopped for a newer attempt") from exc
        if ctx.shutdown.is_set():
            raise TransientError("shutdown", "runner shutting down", delay_s=1.0) from exc
        if attempt >= MAX_DELIVER:
            await _fail(ctx, spec, attempt, "unexpected", repr(exc), retryable=False)
            raise PermanentError("unexpected", repr(exc)) from exc
        raise
    finally:
        stop.set()
        heartbeat.cancel()
        log.info("task %s attempt %d ran %.1fs", spec.task_id, attempt,
                 time.monotonic() - started)


async def _fail(ctx: RunnerContext, spec: TrainingSpec, attempt: int, code: str, message: str,
                retryable: bool) -> None:
    await _publish(ctx, TaskFailedEvent(source=SOURCE, subject=spec.task_id, data=TaskFailed(
        task_id=spec.task_id, code=code, message=message, retryable=retryable, attempt=attempt)))
