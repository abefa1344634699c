"""Rate-limited progress events from the training thread to the event loop.

Progress is lossy by design (DESIGN.md §3: rate-limited, envelope-id msg ids):
a dropped update is superseded by the next, so a failed publish is logged and
the training goes on, unlike every other event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any

from nats.js import JetStreamContext

from infra.bus.publish import publish_event
from infra.telemetry.logging import traceparent_var
from infra.telemetry.metrics import RUNNER_IMAGES_PER_S
from runner.train import ProgressUpdate
from schemas.events import TaskProgress, TaskProgressEvent

log = logging.getLogger("radtrain.runner.progress")


class ProgressReporter:
    def __init__(self, js: JetStreamContext, loop: asyncio.AbstractEventLoop, task_id: str,
                 source: str, interval_s: float, *, carry: dict[str, object] | None = None,
                 guard: Callable[[], Awaitable[bool]] | None = None) -> None:
        self._js, self._loop, self._task_id, self._source = js, loop, task_id, source
        self._carry = dict(carry or {})
        """The ``task.ready``'s extension attributes and generation (``Envelope.carry``)."""
        self._guard = guard
        """Asked before each send: an attempt that no longer owns the task (a stalled one
        that woke up after its replacement took over) publishes no progress."""
        self._interval = interval_s
        self._last = float("-inf")
        self._last_epoch = -1
        self._metrics: dict[str, float] = {}
        self.sent = 0
        # Built while the task.ready message is handled: its trace goes on every progress event.
        self._traceparent = traceparent_var.get()

    def report(self, update: ProgressUpdate) -> None:
        """Called from the training thread after every step; sends at most one per interval."""
        now = time.monotonic()
        new_epoch = update.epoch != self._last_epoch and bool(update.metrics)
        if now - self._last < self._interval and not new_epoch:
            return
        self._last = now
        if update.metrics:
            self._last_epoch = update.epoch
            self._metrics = dict(update.metrics)  # carried on later steps: the record shows them
        if update.throughput is not None:
            RUNNER_IMAGES_PER_S.set(update.throughput)
        event = TaskProgressEvent(source=self._source, subject=self._task_id,
                                  traceparent=self._traceparent, **self._carry,
                                  data=TaskProgress(
            task_id=self._task_id, epoch=update.epoch, epochs=update.epochs, step=update.step,
            total_steps=update.total_steps, loss=update.loss, metrics=self._metrics,
            throughput=update.throughput, eta_s=update.eta_s))
        fut = asyncio.run_coroutine_threadsafe(self._send(event), self._loop)
        fut.add_done_callback(self._log_failure)
        self.sent += 1

    async def _send(self, event: TaskProgressEvent) -> None:
        if self._guard is not None and not await self._guard():
            return
        await publish_event(self._js, event)

    def _log_failure(self, fut: Future[Any]) -> None:
        if fut.exception() is not None:
            log.warning("progress for %s not sent: %r", self._task_id, fut.exception())
