"""Transport glue shared by every JetStream consumer: fetch → call → ack/nak/term.

The handler function raises typed errors; this module alone turns them into
acknowledgements, so no handler can "log and carry on".
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from infra.errors import PermanentError, Superseded, TransientError
from infra.jetstream import stream_of
from infra.logging import log_context
from infra.metrics import CONSUMER_LAG, EVENT_LATENCY, EVENTS_HANDLED

log = logging.getLogger(__name__)

MsgHandler = Callable[[Msg], Awaitable[None]]

UNEXPECTED_BACKOFF_S = (2.0, 5.0, 15.0, 30.0, 60.0)


def _delivery(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_delivered)
    except Exception:  # a plain (non-JetStream) message in a unit test
        return 1


def _context(msg: Msg) -> tuple[str | None, str | None]:
    """Task id and traceparent of an envelope (or a job carrying them), for the logs."""
    try:
        doc = json.loads(msg.data)
    except ValueError:
        return None, None
    if not isinstance(doc, dict):
        return None, None
    task_id = doc.get("subject") or doc.get("task_id")
    trace = doc.get("traceparent")
    return (task_id if isinstance(task_id, str) else None,
            trace if isinstance(trace, str) else None)


def event_name(subject: str) -> str:
    """``tasks.ready.<id>`` -> ``ready``; ``webhooks.jobs.<t>.<w>`` -> ``jobs``: few labels."""
    parts = subject.split(".")
    return parts[1] if len(parts) > 2 else subject


async def dispatch(msg: Msg, handle: MsgHandler, consumer: str = "") -> str:
    """Settle one message in its log context, counting the outcome by event type."""
    task_id, trace = _context(msg)
    started = time.perf_counter()
    with log_context(task_id=task_id, traceparent=trace):
        outcome = await _settle(msg, handle)
    EVENTS_HANDLED.labels(consumer, event_name(msg.subject), outcome).inc()
    EVENT_LATENCY.labels(consumer).observe(time.perf_counter() - started)
    return outcome


async def _settle(msg: Msg, handle: MsgHandler) -> str:
    """Run one message through ``handle`` and settle it. Returns the outcome for metrics."""
    try:
        await handle(msg)
    except Superseded as exc:
        log.info("superseded %s: %s", msg.subject, exc)
        await msg.ack()
        return "superseded"
    except PermanentError as exc:
        log.warning("permanent error on %s: %s %s", msg.subject, exc.code, exc.message)
        await msg.term()
        return "term"
    except TransientError as exc:
        log.warning("transient error on %s: %s (retry in %.0fs)", msg.subject, exc, exc.delay_s)
        await msg.nak(delay=exc.delay_s)
        return "nak"
    except asyncio.CancelledError:
        await asyncio.shield(msg.nak(delay=1.0))
        raise
    except Exception:
        attempt = _delivery(msg)
        delay = UNEXPECTED_BACKOFF_S[min(attempt, len(UNEXPECTED_BACKOFF_S)) - 1]
        log.exception("unexpected error on %s (delivery %d), retry in %.0fs",
                      msg.subject, attempt, delay)
        await msg.nak(delay=delay)
        return "nak"
    await msg.ack()
    return "ack"


async def consume(
    js: JetStreamContext,
    durable: str,
    handle: MsgHandler,
    stop: asyncio.Event,
    *,
    batch: int = 16,
    fetch_timeout: float = 1.0,
) -> None:
    """Pull from an existing durable consumer until ``stop`` is set."""
    psub = await js.pull_subscribe_bind(durable=durable, stream=stream_of(durable))
    try:
        while not stop.is_set():
            try:
                msgs = await psub.fetch(batch, timeout=fetch_timeout)
            except TimeoutError:
                CONSUMER_LAG.labels(durable).set(0)
                continue
            except nats.errors.Error as exc:  # disconnected: the client reconnects by itself
                log.warning("fetch on %s failed: %r; retrying", durable, exc)
                await asyncio.sleep(1.0)
                continue
            for msg in msgs:
                await dispatch(msg, handle, durable)
            _record_lag(durable, msgs)
    finally:
        await psub.unsubscribe()


def _record_lag(durable: str, msgs: list[Msg]) -> None:
    """Each delivery says how many messages still wait behind it: lag without an API call."""
    try:
        CONSUMER_LAG.labels(durable).set(msgs[-1].metadata.num_pending)
    except Exception:  # no JetStream metadata (a unit-test message)
        pass
