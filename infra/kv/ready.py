"""Open a KV bucket once it can be opened: after ``infra apply`` and after an election.

A process may start before ``infra apply`` has created its buckets (``radtrain up``
starts everything at once), or while a clustered bucket's stream is electing a
leader (its info request then times out or answers 503). Both pass in seconds,
so every service retries the open instead of exiting.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError
from tenacity import (
    AsyncRetrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_attempt,
    wait_fixed,
)

log = logging.getLogger(__name__)

R = TypeVar("R")

NOT_READY_YET = (BucketNotFoundError, nats.errors.Error, TimeoutError)
"""A missing bucket, a NATS error (no responders, 503 during an election), a timeout."""


async def open_when_ready(opener: Callable[[JetStreamContext], Awaitable[R]],
                          js: JetStreamContext, *, attempts: int = 120,
                          delay_s: float = 0.5) -> R:
    """``opener(js)``, retried every ``delay_s`` while the bucket is not ready; the last
    error is raised after ``attempts`` (a minute by default)."""
    async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(NOT_READY_YET), stop=stop_after_attempt(attempts),
            wait=wait_fixed(delay_s), reraise=True,
            before_sleep=before_sleep_log(log, logging.INFO)):
        with attempt:
            return await opener(js)
    raise AssertionError("unreachable: tenacity re-raises the last error")
