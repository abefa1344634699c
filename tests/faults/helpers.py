"""Shared helpers of the fault tests: settings, polling, counting events in the stream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from nats.js import JetStreamContext

from infra.bus.topology import TASKS_STREAM
from infra.settings import Settings

T = TypeVar("T")

GOOD_BODY: dict[str, Any] = {
    "name": "fault", "flow": "general", "task_type": "classification", "dataset_id": "ds-good",
    "model": {"mode": "manual", "network": "mobilenetv3_small_100", "pretrained": False},
    "tuning": {"mode": "manual", "hyperparameters": {"epochs": 1, "image_size": 64}},
}


def fault_settings(data: Path, **over: Any) -> Settings:
    """A private stack: free ports, fast retries, no rate limit in the way of a burst."""
    base: dict[str, Any] = dict(
        data_dir=data, store_dir=data / "store", cache_dir=data / "cache", work_dir=data / "work",
        gateway_port=0, nats_port=0, rate_limit_per_s=1e6, rate_limit_burst=1_000_000,
        retry_delay_scale=0.05, log_format="text")
    return Settings(**(base | over))


async def wait_for(check: Callable[[], Awaitable[T | None]], timeout_s: float,
                   what: str, interval_s: float = 0.25) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what} (last: {last!r})")


async def subject_counts(js: JetStreamContext, subjects: str = "tasks.>",
                         stream: str = TASKS_STREAM) -> dict[str, int]:
    """Messages per subject, counted by the server: 'exactly once' without reading them."""
    info = await js.stream_info(stream, subjects_filter=subjects)
    return dict(info.state.subjects or {})


def per_task(counts: dict[str, int], event: str) -> dict[str, int]:
    """``{task_id: n}`` of one event type from :func:`subject_counts`."""
    out: dict[str, int] = {}
    for subject, n in counts.items():
        parts = subject.split(".")
        if len(parts) == 3 and parts[1] == event:
            out[parts[2]] = n
    return out
