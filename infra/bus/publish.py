"""Publishing events on JetStream with their deterministic ``Nats-Msg-Id``."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import PubAck

from infra.telemetry.logging import traceparent_var
from schemas.events import Envelope, encode_event


async def publish_event(
    js: JetStreamContext, event: Envelope, *, ack_timeout_s: float = 10.0
) -> PubAck:
    """Publish and wait for the JetStream ack; a duplicate within the window is a no-op.

    An event without a ``traceparent`` takes the one of the message or request
    being handled (set by the bus subscriber or the gateway middleware), so
    every event of a task carries the trace of the HTTP request that started it.
    """
    if event.traceparent is None and traceparent_var.get() is not None:
        event = event.model_copy(update={"traceparent": traceparent_var.get()})
    return await js.publish(
        event.nats_subject,
        encode_event(event),
        timeout=ack_timeout_s,
        headers={"Nats-Msg-Id": event.msg_id},
    )
