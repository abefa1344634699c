"""Transport glue shared by every JetStream consumer: fetch → call → ack/nak/term.

The handler function raises typed errors; this module alone turns them into
acknowledgements, so no handler can "log and carry on".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from infra.errors import PermanentError, Superseded, TransientError
from infra.jetstream import TASKS_STREAM

log = logging.getLogger(__name__)

MsgHandler = Callable[[Msg], Awaitable[None]]

UNEXPECTED_BACKOFF_S = (2.0, 5.0, 15.0, 30.0, 60.0)


def _delivery(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_delivered)
    except Exception:  # a plain (non-JetStream) message in a unit test
        return 1


async def dispatch(msg: Msg, handle: MsgHandler) -> str:
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
    psub = await js.pull_subscribe_bind(durable=durable, stream=TASKS_STREAM)
    try:
        while not stop.is_set():
            try:
                msgs = await psub.fetch(batch, timeout=fetch_timeout)
            except TimeoutError:
                continue
            except nats.errors.Error as exc:  # disconnected: the client reconnects by itself
                log.warning("fetch on %s failed: %r; retrying", durable, exc)
                await asyncio.sleep(1.0)
                continue
            for msg in msgs:
                await dispatch(msg, handle)
    finally:
        await psub.unsubscribe()
