"""One delivery of a ``task.ready`` while it trains: heartbeat, fence, cancellation.

DESIGN.md §4: JetStream accepts an ack that arrives after the ack wait, when
the message may already be redelivered elsewhere. So each attempt is fenced
by its delivery count: the stream's latest ``task.started`` (and the KV
record) name the attempt that owns the task, and an older attempt stops
training, writes no checkpoint, publishes nothing and settles nothing.

Cancellation is looked up in the stream too (``tasks.cancel_requested.<id>``,
every ``cancel_poll_s``): the stream is the source of truth, so no lag of the
KV projection delays it. The training thread polls ``should_stop`` every
step, so a cancel takes effect within one step of being seen.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field

import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from infra.bus.subscriber import Delivery
from infra.bus.topology import TASKS_STREAM
from infra.kv import TaskRepo
from infra.settings import Settings
from infra.store import ObjectStore
from schemas.events import Envelope, TaskCancelRequestedEvent, TaskStartedEvent, parse_event
from schemas.record import TERMINAL_STATES

log = logging.getLogger("radtrain.runner")
FINISHED = ("completed", "failed", "cancelled")
GUARD_TIMEOUT_S = 10.0


@dataclass
class RunnerContext:
    settings: Settings
    js: JetStreamContext
    tasks: TaskRepo
    store: ObjectStore
    device: str
    shutdown: threading.Event = field(default_factory=threading.Event)


async def last_event(js: JetStreamContext, task_id: str, name: str) -> Envelope | None:
    """The task's latest event of one kind, straight from the stream (no projection lag)."""
    try:
        raw = await js.get_last_msg(TASKS_STREAM, f"tasks.{name}.{task_id}")
    except NotFoundError:
        return None
    return parse_event(raw.data or b"")


async def ownership(ctx: RunnerContext, task_id: str, attempt: int) -> str | None:
    """None while ``attempt`` owns the task; else ``"finished"`` or ``"newer_attempt"``."""
    for name in FINISHED:
        if await last_event(ctx.js, task_id, name) is not None:
            return "finished"
    started = await last_event(ctx.js, task_id, "started")
    if isinstance(started, TaskStartedEvent) and started.data.attempt > attempt:
        return "newer_attempt"
    found = await ctx.tasks.get(task_id)
    if found is not None:
        rec = found[0]
        if rec.state in TERMINAL_STATES:
            return "finished"
        if rec.state == "running" and rec.attempt > attempt:
            return "newer_attempt"
    return None


async def fence(ctx: RunnerContext, task_id: str, attempt: int) -> bool:
    """True while this attempt still owns the task (DESIGN.md §4)."""
    return await ownership(ctx, task_id, attempt) is None


async def cancel_request(js: JetStreamContext, task_id: str) -> TaskCancelRequestedEvent | None:
    event = await last_event(js, task_id, "cancel_requested")
    return event if isinstance(event, TaskCancelRequestedEvent) else None


class Attempt:
    """Supervises one delivery from the event loop; the training thread asks it questions."""

    def __init__(self, delivery: Delivery, ctx: RunnerContext, task_id: str) -> None:
        self.delivery, self.ctx, self.task_id = delivery, ctx, task_id
        self.attempt = delivery.attempt
        self.loop = asyncio.get_running_loop()
        self.reason: str | None = None
        """Why this attempt must stop: ``cancelled`` or ``fenced`` (set once)."""
        self.cancel: TaskCancelRequestedEvent | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._heartbeat()),
                       asyncio.create_task(self._watch_cancel())]

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()

    def _set(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason

    # --- asked from the training thread --------------------------------------
    def should_stop(self) -> str | None:
        if self.reason is not None:
            return self.reason
        return "shutdown" if self.ctx.shutdown.is_set() else None

    def owns(self) -> bool:
        """Checked before every checkpoint write; an unreachable bus does not block it
        (both attempts train the same seeded run, so a stale checkpoint is still valid)."""
        fut = asyncio.run_coroutine_threadsafe(
            ownership(self.ctx, self.task_id, self.attempt), self.loop)
        try:
            why = fut.result(timeout=GUARD_TIMEOUT_S)
        except Exception as exc:
            log.warning("task %s: ownership check failed (%r); writing anyway", self.task_id, exc)
            return True
        if why == "newer_attempt":
            self._set("fenced")
        return why is None

    # --- background tasks -----------------------------------------------------
    async def _heartbeat(self) -> None:
        """Keep the ack deadline alive, and stop if a newer attempt took over."""
        while True:
            await asyncio.sleep(self.ctx.settings.heartbeat_s)
            try:
                await self.delivery.in_progress()
                if await ownership(self.ctx, self.task_id, self.attempt) == "newer_attempt":
                    log.warning("task %s: attempt %d is superseded; stopping",
                                self.task_id, self.attempt)
                    self._set("fenced")
                    return
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("heartbeat for %s failed: %r", self.task_id, exc)

    async def _watch_cancel(self) -> None:
        while True:
            try:
                found = await cancel_request(self.ctx.js, self.task_id)
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("cancel check for %s failed: %r", self.task_id, exc)
                found = None
            if found is not None:
                log.info("task %s: cancel requested by %s", self.task_id, found.data.by)
                self.cancel = found
                self._set("cancelled")
                return
            await asyncio.sleep(self.ctx.settings.cancel_poll_s)
