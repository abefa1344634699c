"""The runner's presence (runner/presence.py) and its command line, without NATS."""

from __future__ import annotations

import asyncio
from typing import Any

from infra.settings import Settings
from runner.app import parse_args, settings_from
from runner.presence import Presence
from schemas.events import Envelope, TaskReadyEvent
from tests.unit.runner.test_checkpoint_resume import tiny_spec


def presence(**over: Any) -> Presence:
    return Presence(None, Settings(runner_id="r-1", runner_heartbeat_s=0.05, **over), "cpu")


async def test_an_idle_runner_exits_after_the_idle_timeout_and_a_busy_one_does_not() -> None:
    idle = presence(runner_idle_exit_s=0.2)
    await asyncio.wait_for(idle.run(), 5)
    assert idle.done.is_set() and idle.record.mode == "idle-exit"
    busy = presence(runner_idle_exit_s=0.2)
    await busy.beat(current_task="t1", current_tenant="default")
    loop = asyncio.create_task(busy.run())
    await asyncio.sleep(0.6)
    assert not busy.done.is_set()
    busy.done.set()
    await asyncio.wait_for(loop, 5)
    serving = presence()
    loop = asyncio.create_task(serving.run())
    await asyncio.sleep(0.3)
    assert not serving.done.is_set() and serving.record.mode == "serve"
    serving.done.set()
    await asyncio.wait_for(loop, 5)


async def test_once_ends_the_runner_after_one_task_whatever_its_outcome() -> None:
    seen: list[str | None] = []

    async def handle(event: TaskReadyEvent, delivery: Any) -> list[Envelope]:
        seen.append(p.record.current_task)
        raise RuntimeError("boom")

    p = presence(runner_once=True)
    ready = TaskReadyEvent(source="t", subject="resume-1", data=tiny_spec())
    wrapped = p.wrap(handle)
    try:
        await wrapped(ready, None)  # type: ignore[arg-type]
    except RuntimeError:
        pass
    assert seen == [ready.task_id] and p.record.current_task is None
    assert p.done.is_set() and p.handled == 1 and p.record.mode == "once"
    assert p.record.devices[0].kind == "cpu"


def test_the_command_line_sets_the_scale_to_zero_modes() -> None:
    base = Settings()
    once = settings_from(parse_args(["--once", "--pool", "gpu"]), base)
    assert (once.runner_once, once.runner_pool, once.runner_idle_exit_s) == (True, "gpu", 0.0)
    idle = settings_from(parse_args(["--idle-exit", "30"]), base)
    assert (idle.runner_once, idle.runner_idle_exit_s, idle.runner_pool) == (False, 30.0, "cpu")
    assert settings_from(parse_args([]), base) is base
