"""Publishing events on JetStream with their deterministic ``Nats-Msg-Id``."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import BadRequestError

from infra.telemetry.logging import traceparent_var
from schemas.events import Envelope, encode_event


def traced(event: Envelope) -> Envelope:
    """``event`` with the trace of the message or request being handled, if it has none."""
    if event.traceparent is None and traceparent_var.get() is not None:
        return event.model_copy(update={"traceparent": traceparent_var.get()})
    return event


async def publish_event(
    js: JetStreamContext, event: Envelope, *, ack_timeout_s: float = 10.0
) -> PubAck:
    """Publish and wait for the JetStream ack; a duplicate within the window is a no-op.

    An event without a ``traceparent`` takes the one of the message or request
    being handled (set by the bus subscriber or the gateway middleware), so
    every event of a task carries the trace of the HTTP request that started it.
    """
    return await _publish(js, event, ack_timeout_s)


async def _publish(js: JetStreamContext, event: Envelope, ack_timeout_s: float,
                   headers: dict[str, str] | None = None) -> PubAck:
    """``event`` traced, under its deterministic ``Nats-Msg-Id`` and ``headers``."""
    event = traced(event)
    return await js.publish(event.nats_subject, encode_event(event), timeout=ack_timeout_s,
                            headers={"Nats-Msg-Id": event.msg_id, **(headers or {})})


WRONG_LAST_SEQUENCE = 10071
"""JetStream's error code for a failed ``Nats-Expected-Last-*`` precondition."""


async def publish_first_event(
    js: JetStreamContext, event: Envelope, *, ack_timeout_s: float = 10.0
) -> bool:
    """Publish ``event`` only if its subject holds no message yet (JetStream checks it
    atomically: ``Nats-Expected-Last-Subject-Sequence: 0``): ``True`` when this call
    stored it, ``False`` when the subject already held one (another publish, possibly
    of the same event, came first). A create for events, as ``kv.create`` is for keys."""
    try:
        ack = await _publish(js, event, ack_timeout_s,
                             {"Nats-Expected-Last-Subject-Sequence": "0"})
    except BadRequestError as exc:
        if exc.err_code == WRONG_LAST_SEQUENCE:
            return False
        raise
    return not ack.duplicate
