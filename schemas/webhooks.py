"""Outgoing webhooks: subscriptions, delivery jobs and the record of every attempt."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field, HttpUrl, field_validator

from schemas.api import Page
from schemas.common import Identifier, Strict
from schemas.tenancy import SigningSecret, live_secrets

WebhookEventType = Literal[
    "task.rejected", "task.started", "task.completed", "task.failed", "task.cancelled",
]
ALL_WEBHOOK_EVENTS: tuple[WebhookEventType, ...] = (
    "task.rejected", "task.started", "task.completed", "task.failed", "task.cancelled",
)
DeliveryState = Literal["pending", "succeeded", "failed"]
BreakerState = Literal["closed", "open", "half_open"]


class EndpointBreaker(Strict):
    """The circuit breaker of one subscription's endpoint; KV ``webhook_breakers``.

    ``closed``: deliveries go out. ``open``: the endpoint kept failing for a period;
    nothing is sent (jobs wait, no attempt is spent) until ``probe_at``. ``half_open``:
    one probe delivery is on its way; its success closes the circuit, its failure
    opens it again."""

    state: BreakerState = "closed"
    since: datetime | None = None
    """When it entered ``state`` (``None``: never changed)."""
    failures: int = Field(0, ge=0)
    """Consecutive failed attempts."""
    failing_since: datetime | None = None
    """The first of those failures."""
    probe_at: datetime | None = None
    """``open``: when the next probe may go."""
    last_error: str | None = None


class WebhookCreate(Strict):
    """``POST /v1/webhooks`` body."""

    url: HttpUrl
    event_types: list[WebhookEventType] = Field(
        default_factory=lambda: list(ALL_WEBHOOK_EVENTS), min_length=1, max_length=5)
    description: str = Field("", max_length=500)

    @field_validator("event_types")
    @classmethod
    def _unique(cls, value: list[WebhookEventType]) -> list[WebhookEventType]:
        return sorted(set(value), key=ALL_WEBHOOK_EVENTS.index)


class Webhook(Strict):
    """A subscription as clients see it: no secret (shown once, at creation or rotation)."""

    id: Identifier
    url: str
    event_types: list[WebhookEventType]
    description: str = ""
    created_at: datetime
    breaker: EndpointBreaker = Field(default_factory=EndpointBreaker)
    """Whether deliveries to it go out now (closed), are paused (open) or probing."""


class WebhookSecret(Strict):
    """The answer to creation and rotation: the secret receivers verify with."""

    webhook: Webhook
    secret: str


class WebhookSubscription(Strict):
    """What KV ``webhooks`` holds under ``<tenant>.<id>``: newest secret first."""

    id: Identifier
    tenant: Identifier
    url: str
    event_types: list[WebhookEventType]
    description: str = ""
    created_at: datetime
    secrets: list[SigningSecret] = Field(min_length=1)

    def public(self, breaker: EndpointBreaker | None = None) -> Webhook:
        return Webhook(id=self.id, url=self.url, event_types=self.event_types,
                       description=self.description, created_at=self.created_at,
                       breaker=breaker or EndpointBreaker())


class DeliveryAttempt(Strict):
    attempt: int = Field(ge=1)
    at: datetime
    status_code: int | None = None
    error: str | None = None
    duration_ms: float = Field(ge=0)
    next_retry_at: datetime | None = None


class Delivery(Strict):
    """One event to one subscription, with every attempt; KV ``webhook_deliveries``."""

    id: Identifier
    webhook_id: Identifier
    event_id: str
    event_type: WebhookEventType
    task_id: Identifier
    state: DeliveryState = "pending"
    created_at: datetime
    updated_at: datetime
    attempts: list[DeliveryAttempt] = Field(default_factory=list)


class WebhookJob(Strict):
    """A message on ``webhooks.jobs.<tenant>.<webhook id>``: what to send, not where.

    URL and secrets are read from the subscription at each attempt, so a
    deleted subscription stops its retries and a rotated secret is used at once.
    """

    delivery_id: Identifier
    webhook_id: Identifier
    tenant: Identifier
    task_id: Identifier
    event_type: WebhookEventType
    body: str
    """The CloudEvent JSON exactly as it will be signed and sent."""
    first_at: datetime
    traceparent: str | None = None


class WebhookPage(Page[Webhook]):
    pass


class DeliveryPage(Page[Delivery]):
    pass


def active_secrets(sub: WebhookSubscription, now: datetime) -> list[str]:
    """The secrets that sign a delivery at ``now`` (several during a rotation)."""
    return live_secrets(sub.secrets, now)
