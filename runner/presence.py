"""A runner's presence: its heartbeat in KV ``runners``, and when it may exit.

Every ``runner_heartbeat_s`` the runner rewrites its record (pool, devices,
memory, the task it trains, started_at, last_seen); the bucket's TTL drops
a runner that died without deleting it. The same object tracks activity for
the scale-to-zero modes: ``--once`` (one task, then exit) and
``runner_idle_exit_s`` (exit after that long without a task), which set the
subscriber's stop event between tasks, never during one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import nats.errors

from infra.bus.subscriber import Delivery, Handler
from infra.kv.runners import RunnerRepo
from infra.settings import Settings
from schemas.events import Envelope, TaskReadyEvent
from schemas.pools import RunnerDevice, RunnerHeartbeat

log = logging.getLogger("radtrain.runner")
KV_ERRORS = (nats.errors.Error, TimeoutError)


def host_memory_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        return None


def devices_of(device: str) -> list[RunnerDevice]:
    """What the runner trains on: every visible CUDA device, or the CPU."""
    if device == "cuda":
        import torch  # the runner has torch; imported here to keep this module light

        found = []
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            found.append(RunnerDevice(kind="cuda", name=f"cuda:{i} {props.name}",
                                      memory_gb=round(props.total_memory / 2**30, 1)))
        return found
    return [RunnerDevice(kind="cpu", name=f"cpu ({os.cpu_count() or 1} cores)")]


def mode_of(settings: Settings) -> str:
    if settings.runner_once:
        return "once"
    return "idle-exit" if settings.runner_idle_exit_s else "serve"


@dataclass
class Presence:
    """The runner's record and activity; ``done`` is set when the runner should exit."""

    repo: RunnerRepo | None
    settings: Settings
    device: str
    done: asyncio.Event = field(default_factory=asyncio.Event)
    handled: int = 0
    last_activity: float = field(default_factory=time.monotonic)
    record: RunnerHeartbeat = field(init=False)

    def __post_init__(self) -> None:
        now = datetime.now(UTC)
        self.record = RunnerHeartbeat(
            runner_id=self.settings.runner_id or "runner", pool=self.settings.runner_pool,
            devices=devices_of(self.device), memory_gb=host_memory_gb(), started_at=now,
            last_seen=now, mode=mode_of(self.settings))

    async def beat(self, **change: Any) -> None:
        """Rewrite the record (with ``change``); an unreachable KV is logged, not raised."""
        self.record = self.record.model_copy(update={**change, "last_seen": datetime.now(UTC)})
        if self.repo is None:
            return
        try:
            await self.repo.beat(self.record)
        except KV_ERRORS as exc:
            log.warning("runner heartbeat not written: %r", exc)

    async def run(self) -> None:
        """Heartbeats, and the idle exit, until ``done``."""
        idle_s = self.settings.runner_idle_exit_s
        every = self.settings.runner_heartbeat_s
        while not self.done.is_set():
            await self.beat()
            if idle_s and self.record.current_task is None \
                    and time.monotonic() - self.last_activity >= idle_s:
                log.info("runner idle for %.0fs: exiting", idle_s)
                self.done.set()
                break
            tick = min(every, idle_s / 4) if idle_s else every
            try:
                await asyncio.wait_for(self.done.wait(), tick)
            except TimeoutError:
                pass

    async def leave(self) -> None:
        if self.repo is None:
            return
        try:
            await self.repo.leave(self.record.runner_id)
        except KV_ERRORS as exc:
            log.warning("runner record not deleted (it expires by itself): %r", exc)

    def wrap(self, handle: Handler[TaskReadyEvent]) -> Handler[TaskReadyEvent]:
        """The handler, recording the current task; in ``--once`` mode the first task
        handled (whatever its outcome) ends the runner once it is settled."""

        async def tracked(event: TaskReadyEvent, delivery: Delivery) -> list[Envelope]:
            await self.beat(current_task=event.task_id, current_tenant=event.data.tenant)
            try:
                return list(await handle(event, delivery))
            finally:
                self.handled += 1
                self.last_activity = time.monotonic()
                await self.beat(current_task=None, current_tenant=None)
                if self.settings.runner_once:
                    self.done.set()

        return tracked
