"""Outgoing webhooks, the pure part: which events go where, ids, headers, retry schedule.

The glue that reads KV, publishes jobs and makes the HTTP call is
``handlers/deliverer.py``; everything that decides something is here and
testable without a network.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from infra.security.signing import sign_headers
from schemas.cloudevents import STRUCTURED_MEDIA
from schemas.webhooks import ALL_WEBHOOK_EVENTS, WebhookEventType, WebhookSubscription

DELIVERY_NS = uuid.UUID("0b8e0f5e-5a2c-4b7e-9f57-2d3c1a6e9b41")
USER_AGENT = "radtrain-webhooks/1"


def webhook_event_type(cloudevent_type: str) -> WebhookEventType | None:
    """``radtrain.task.completed.v1`` -> ``task.completed``; ``None`` if not subscribable."""
    parts = cloudevent_type.split(".")
    if len(parts) != 4 or parts[0] != "radtrain":
        return None
    name = f"{parts[1]}.{parts[2]}"
    for known in ALL_WEBHOOK_EVENTS:
        if known == name:
            return known
    return None


def subscribers(subs: list[WebhookSubscription], event_type: WebhookEventType
                ) -> list[WebhookSubscription]:
    return [s for s in subs if event_type in s.event_types]


def delivery_id(event_id: str, webhook_id: str) -> str:
    """Deterministic: the same event for the same subscription is one delivery, whatever
    redelivers it; it is also the ``webhook-id`` receivers deduplicate on."""
    return "msg" + uuid.uuid5(DELIVERY_NS, f"{event_id}\x00{webhook_id}").hex


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff ``base * 2**(n-1)`` capped at ``max_delay_s``, for ``window_s``."""

    base_s: float
    max_delay_s: float
    window_s: float

    def delay(self, attempt: int) -> float:
        """Wait after the ``attempt``-th failure (1-based)."""
        return float(min(self.base_s * 2.0 ** min(attempt - 1, 60), self.max_delay_s))

    def next_delay(self, attempt: int, first_at: datetime, now: datetime) -> float | None:
        """The wait before the next try, or ``None`` when it would fall outside the window."""
        delay = self.delay(attempt)
        if now + timedelta(seconds=delay) > first_at + timedelta(seconds=self.window_s):
            return None
        return delay

    def schedule(self) -> list[float]:
        """Every delay until the window closes, as if each attempt took no time (for docs)."""
        out: list[float] = []
        while sum(out) + self.delay(len(out) + 1) <= self.window_s:
            out.append(self.delay(len(out) + 1))
        return out


def request_headers(secrets: list[str], msg_id: str, timestamp: int, body: bytes,
                    traceparent: str | None) -> dict[str, str]:
    """Standard Webhooks signature over the exact ``body``, which is one CloudEvent in
    structured mode (CloudEvents HTTP binding): receivers parse it with any SDK."""
    headers = sign_headers(secrets, msg_id, timestamp, body)
    headers["content-type"] = STRUCTURED_MEDIA
    headers["user-agent"] = USER_AGENT
    if traceparent:
        headers["traceparent"] = traceparent
    return headers


def is_success(status: int) -> bool:
    """2xx only: a redirect is not followed (it could point anywhere) and counts as failure."""
    return 200 <= status < 300
