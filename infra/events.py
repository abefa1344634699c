"""Publishing events on JetStream with their deterministic ``Nats-Msg-Id``."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import PubAck

from schemas.events import Envelope, encode_event


async def publish_event(
    js: JetStreamContext, event: Envelope, *, ack_timeout_s: float = 10.0
) -> PubAck:
    """Publish and wait for the JetStream ack; a duplicate within the window is a no-op."""
    return await js.publish(
        event.nats_subject,
        encode_event(event),
        timeout=ack_timeout_s,
        headers={"Nats-Msg-Id": event.msg_id},
    )
