"""One attempt of a task while it trains: heartbeat, fence, cancellation.

DESIGN.md §4: JetStream accepts an ack that arrives after the ack wait, when
the message may already be redelivered elsewhere. So each attempt is fenced
by the KV ``runs`` ledger (runner/ownership.py): the attempt owns the task
while the ledger names it as the running owner. An attempt that a newer one
replaced stops training, writes no checkpoint, publishes nothing and settles
nothing. The check fails closed: when the ledger cannot be read (NATS
unreachable), :meth:`Attempt.owns` says no, so no checkpoint is written, and
the attempt stops as a transient error (nak) rather than write blindly.

Cancellation is looked up in the stream (``tasks.cancel_requested.<id>``,
every ``cancel_poll_s``): the stream is the source of truth, so no lag of the
KV projection delays it. The training thread polls ``should_stop`` every
step, so a cancel takes effect within one step of being seen.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from dataclasses import dataclass, field

import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from infra.bus.subscriber import Delivery
from infra.bus.topology import TASKS_STREAM
from infra.kv import RunRepo, TaskRepo
from infra.settings import Settings
from infra.store import ObjectStore
from runner.ownership import owner_status
from schemas.events import Envelope, TaskCancelRequestedEvent, TaskReadyEvent, parse_event

log = logging.getLogger("radtrain.runner")
GUARD_TIMEOUT_S = 10.0
UNVERIFIED = "unverified"
"""Stop reason: the ownership check could not reach the ledger (fail closed)."""


def default_runner_id() -> str:
    """``<hostname>-<pid>``: unique per runner process."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class RunnerContext:
    settings: Settings
    js: JetStreamContext
    tasks: TaskRepo
    runs: RunRepo
    store: ObjectStore
    device: str
    shutdown: threading.Event = field(default_factory=threading.Event)

    @property
    def runner_id(self) -> str:
        return self.settings.runner_id or default_runner_id()


async def last_event(js: JetStreamContext, task_id: str, name: str) -> Envelope | None:
    """The task's latest event of one kind, straight from the stream (no projection lag)."""
    try:
        raw = await js.get_last_msg(TASKS_STREAM, f"tasks.{name}.{task_id}")
    except NotFoundError:
        return None
    return parse_event(raw.data or b"")


async def cancel_request(js: JetStreamContext, ready: TaskReadyEvent
                         ) -> TaskCancelRequestedEvent | None:
    """The cancel request of this run, if any: one of an older generation (before on-call
    re-opened the task) counts only if it came after this ``task.ready``."""
    event = await last_event(js, ready.task_id, "cancel_requested")
    if not isinstance(event, TaskCancelRequestedEvent):
        return None
    if (ready.taskgeneration == 1 or event.taskgeneration >= ready.taskgeneration
            or event.time > ready.time):
        return event
    return None


class Attempt:
    """Supervises one attempt from the event loop; the training thread asks it questions."""

    def __init__(self, delivery: Delivery, ctx: RunnerContext, ready: TaskReadyEvent,
                 attempt: int) -> None:
        self.delivery, self.ctx, self.ready = delivery, ctx, ready
        self.task_id, self.generation, self.attempt = ready.task_id, ready.taskgeneration, attempt
        self.loop = asyncio.get_running_loop()
        self.reason: str | None = None
        """Why this attempt must stop: ``cancelled``, ``fenced`` or ``unverified`` (set once)."""
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

    async def status(self) -> str | None:
        """None while the ledger names this attempt; raises when it cannot be read."""
        return await owner_status(self.ctx.runs, self.task_id, self.attempt, self.generation)

    async def still_owns(self) -> bool:
        """For progress: an unreadable ledger is a no (a dropped update costs nothing)."""
        try:
            return await self.status() is None
        except (nats.errors.Error, TimeoutError):
            return False

    # --- asked from the training thread --------------------------------------
    def should_stop(self) -> str | None:
        if self.reason is not None:
            return self.reason
        return "shutdown" if self.ctx.shutdown.is_set() else None

    def owns(self) -> bool:
        """Checked before every checkpoint write. Fails closed: an unreachable ledger is a
        no (nothing written) and stops the attempt as a transient error."""
        fut = asyncio.run_coroutine_threadsafe(self.status(), self.loop)
        try:
            why = fut.result(timeout=GUARD_TIMEOUT_S)
        except Exception as exc:
            fut.cancel()
            log.warning("task %s: ownership of attempt %d unverified (%r); not writing",
                        self.task_id, self.attempt, exc)
            self._set(UNVERIFIED)
            return False
        if why is not None:
            log.warning("task %s: attempt %d no longer owns the task (%s); fenced",
                        self.task_id, self.attempt, why)
            self._set("fenced")
        return why is None

    # --- background tasks -----------------------------------------------------
    async def _heartbeat(self) -> None:
        """Keep the ack deadline alive, and stop if a newer attempt took over."""
        while True:
            await asyncio.sleep(self.ctx.settings.heartbeat_s)
            try:
                if await self.status() is not None:
                    log.warning("task %s: attempt %d is superseded; fenced, stopping",
                                self.task_id, self.attempt)
                    self._set("fenced")
                    return
                await self.delivery.in_progress()
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("heartbeat for %s failed: %r", self.task_id, exc)

    async def _watch_cancel(self) -> None:
        while True:
            try:
                found = await cancel_request(self.ctx.js, self.ready)
            except (nats.errors.Error, TimeoutError) as exc:
                log.warning("cancel check for %s failed: %r", self.task_id, exc)
                found = None
            if found is not None:
                log.info("task %s: cancel requested by %s", self.task_id, found.data.by)
                self.cancel = found
                self._set("cancelled")
                return
            await asyncio.sleep(self.ctx.settings.cancel_poll_s)
