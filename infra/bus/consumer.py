"""Settling one JetStream message from the typed error its handling raised (DESIGN.md §9).

The subscriber loop (infra/bus/subscriber.py) runs the work; this module alone
turns its outcome into an acknowledgement, so no handler can "log and carry on":

- success → ack; ``Superseded`` → ack.
- ``Fenced`` → settle nothing: a newer delivery of this message owns it.
- ``PermanentError`` → ``term`` with the error as the reason (it lands in the
  MSG_TERMINATED advisory); a ``PoisonMessage`` reason is marked so the
  dead-letter forwarder copies the message to ``DLQ``.
- ``TransientError`` → ``nak(its delay)``; anything else → ``nak`` on the
  consumer's own schedule (read from the server at bind). Both record the
  error for the dead letter, and the last allowed delivery naks at once so
  the max-deliveries advisory, hence the dead letter, follows immediately.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from infra.bus.last_errors import LastErrors
from infra.bus.topology import parse_retry_metadata, stream_of
from infra.errors import Fenced, PermanentError, PoisonMessage, Superseded, TransientError

log = logging.getLogger(__name__)

UNEXPECTED_BACKOFF_S = (2.0, 5.0, 15.0, 30.0, 60.0)
DEAD_LETTER_REASON = "dead-letter"
"""Prefix of a term reason that asks the forwarder for a dead letter."""
MAX_REASON_CHARS = 1000


@dataclass(frozen=True)
class RetryPlan:
    """How one consumer retries, as configured on the server (infra/bus/topology.py)."""

    stream: str = ""
    consumer: str = ""
    max_deliver: int = -1
    delays_s: tuple[float, ...] = UNEXPECTED_BACKOFF_S
    errors: LastErrors | None = None

    def is_last(self, attempt: int) -> bool:
        return self.max_deliver > 0 and attempt >= self.max_deliver

    def delay(self, attempt: int, wanted: float | None = None) -> float:
        """``wanted`` (a TransientError's own delay) or the schedule; 0 on the last try."""
        if self.is_last(attempt):
            return 0.0
        if wanted is not None:
            return wanted
        delays = self.delays_s or UNEXPECTED_BACKOFF_S
        return delays[min(max(attempt, 1), len(delays)) - 1]

    async def record(self, msg: Msg, code: str, message: str) -> None:
        """Keep the error for a possible dead letter (bounded consumers only)."""
        seq = stream_seq(msg)
        if self.errors is None or self.max_deliver <= 0 or seq is None:
            return
        await self.errors.record(self.stream, self.consumer, seq, code, message,
                                 delivery_count(msg))


async def load_plan(js: JetStreamContext, psub: JetStreamContext.PullSubscription,
                    durable: str) -> RetryPlan:
    """Read max_deliver and the nak schedule once, so every process uses the server's."""
    try:
        info = await psub.consumer_info()
    except (nats.errors.Error, TimeoutError) as exc:  # still settle messages, on defaults
        log.warning("consumer info of %s unavailable (%r): default retry schedule", durable, exc)
        return RetryPlan(stream=stream_of(durable), consumer=durable)
    return RetryPlan(stream=stream_of(durable), consumer=durable,
                     max_deliver=int(info.config.max_deliver or -1),
                     delays_s=parse_retry_metadata(info.config.metadata) or UNEXPECTED_BACKOFF_S,
                     errors=await LastErrors.open(js))


def term_reason(exc: PermanentError) -> str:
    text = f"{exc.code}: {exc.message}"
    if isinstance(exc, PoisonMessage):
        text = f"{DEAD_LETTER_REASON} {text}"
    return " ".join(text.split())[:MAX_REASON_CHARS]


async def term(msg: Msg, reason: str) -> None:
    """``term`` with a reason: nats-py's ``Msg.term()`` takes none, but the server reads
    ``+TERM <reason>`` and puts the reason in the MSG_TERMINATED advisory."""
    if not msg.reply or msg._client is None:
        await msg.term()  # raises the client's own error for a non-JetStream message
        return
    await msg._client.publish(msg.reply, b"+TERM " + reason.encode())
    msg._ackd = True


def delivery_count(msg: Msg) -> int:
    """JetStream's delivery count of ``msg``, 1 on the first delivery."""
    try:
        return int(msg.metadata.num_delivered or 1)
    except Exception:  # a plain (non-JetStream) message in a unit test
        return 1


def stream_seq(msg: Msg) -> int | None:
    try:
        return int(msg.metadata.sequence.stream)
    except Exception:  # a plain (non-JetStream) message
        return None


def message_context(data: bytes) -> tuple[str | None, str | None]:
    """Task id and traceparent of an envelope (or a job carrying them), for the logs."""
    try:
        doc = json.loads(data)
    except ValueError:
        return None, None
    if not isinstance(doc, dict):
        return None, None
    task_id = doc.get("subject") or doc.get("task_id")
    trace = doc.get("traceparent")
    return (task_id if isinstance(task_id, str) else None,
            trace if isinstance(trace, str) else None)


def event_name(subject: str) -> str:
    """``tasks.ready.<id>`` -> ``ready``; ``webhooks.jobs.<t>.<w>`` -> ``jobs``: few labels.
    ``dispatch.<pool>.<id>`` (a runner pool's copy of a ``task.ready``) -> ``ready``."""
    parts = subject.split(".")
    if parts[0] == "dispatch":
        return "ready"
    return parts[1] if len(parts) > 2 else subject


async def settle(msg: Msg, work: Callable[[], Awaitable[object]], plan: RetryPlan) -> str:
    """Run ``work`` for one message and settle it. Returns the outcome for metrics."""
    try:
        await work()
    except Fenced as exc:
        log.warning("fenced %s: %s; left unsettled for the newer attempt", msg.subject, exc)
        return "fenced"
    except Superseded as exc:
        log.info("superseded %s: %s", msg.subject, exc)
        await msg.ack()
        return "superseded"
    except PermanentError as exc:
        log.warning("permanent error on %s: %s %s", msg.subject, exc.code, exc.message)
        await term(msg, term_reason(exc))
        return "dead_letter" if isinstance(exc, PoisonMessage) else "term"
    except TransientError as exc:
        attempt = delivery_count(msg)
        delay = plan.delay(attempt, exc.delay_s)
        log.warning("transient error on %s (delivery %d): %s (retry in %.1fs)",
                    msg.subject, attempt, exc, delay)
        await plan.record(msg, exc.code, exc.message)
        await msg.nak(delay=delay)
        return "nak"
    except asyncio.CancelledError:
        await asyncio.shield(msg.nak(delay=1.0))
        raise
    except Exception as exc:
        attempt = delivery_count(msg)
        delay = plan.delay(attempt)
        log.exception("unexpected error on %s (delivery %d), retry in %.1fs",
                      msg.subject, attempt, delay)
        await plan.record(msg, "unexpected", repr(exc))
        await msg.nak(delay=delay)
        return "nak"
    await msg.ack()
    return "ack"
