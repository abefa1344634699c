"""The event envelope (CloudEvents 1.0 attribute names) and every payload.

Each event type is its own model; ``parse_event`` picks the model by ``type``
through a discriminated union, so a consumer gets a typed object or a
validation error that names the field, never a half-parsed dict.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, ClassVar, Literal

from pydantic import Field, TypeAdapter

from schemas.common import ErrorDetail, Identifier, Strict
from schemas.spec import TrainingSpec
from schemas.tasks import TaskRequested

# --- payloads ---------------------------------------------------------------


class TaskRejected(Strict):
    task_id: Identifier
    tenant: Identifier
    errors: list[ErrorDetail] = Field(min_length=1)


class TaskStarted(Strict):
    task_id: Identifier
    runner_id: str
    attempt: int = Field(ge=1)
    resumed_from_epoch: int | None = None
    device: str = "cpu"


class TaskProgress(Strict):
    task_id: Identifier
    epoch: int = Field(ge=0)
    epochs: int = Field(ge=1)
    step: int = Field(ge=0)
    total_steps: int = Field(ge=0)
    loss: float | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    throughput: float | None = None
    """Images per second over the last interval."""
    eta_s: float | None = None


class Artifact(Strict):
    name: str
    key: str
    uri: str
    sha256: str
    size: int = Field(ge=0)


class TaskCompleted(Strict):
    task_id: Identifier
    metrics: dict[str, float]
    artifacts: list[Artifact]
    duration_s: float = Field(ge=0)
    attempt: int = Field(1, ge=1)


class TaskFailed(Strict):
    task_id: Identifier
    code: str
    message: str
    retryable: bool
    attempt: int = Field(1, ge=1)


class TaskCancelRequested(Strict):
    task_id: Identifier
    by: str
    reason: str = ""


class TaskCancelled(Strict):
    task_id: Identifier
    by: str
    reason: str = ""
    last_checkpoint_epoch: int | None = None
    attempt: int = Field(1, ge=1)


# --- envelopes --------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


class Envelope(Strict):
    specversion: Literal["1.0"] = "1.0"
    id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    source: str
    subject: Identifier
    time: datetime = Field(default_factory=_now)
    datacontenttype: Literal["application/json"] = "application/json"
    traceparent: str | None = None

    name: ClassVar[str]
    one_shot: ClassVar[bool] = True

    @property
    def task_id(self) -> str:
        return self.subject

    @property
    def nats_subject(self) -> str:
        return f"tasks.{self.name}.{self.subject}"

    @property
    def msg_id(self) -> str:
        """Deterministic ``Nats-Msg-Id``: publishing the same fact twice is harmless."""
        return f"{self.subject}:{self.name}" if self.one_shot else self.id


class TaskRequestedEvent(Envelope):
    name: ClassVar[str] = "requested"
    type: Literal["radtrain.task.requested.v1"] = "radtrain.task.requested.v1"
    data: TaskRequested


class TaskReadyEvent(Envelope):
    name: ClassVar[str] = "ready"
    type: Literal["radtrain.task.ready.v1"] = "radtrain.task.ready.v1"
    data: TrainingSpec


class TaskRejectedEvent(Envelope):
    name: ClassVar[str] = "rejected"
    type: Literal["radtrain.task.rejected.v1"] = "radtrain.task.rejected.v1"
    data: TaskRejected


class TaskStartedEvent(Envelope):
    name: ClassVar[str] = "started"
    type: Literal["radtrain.task.started.v1"] = "radtrain.task.started.v1"
    data: TaskStarted

    @property
    def msg_id(self) -> str:
        return f"{self.subject}:started:{self.data.attempt}"


class TaskProgressEvent(Envelope):
    name: ClassVar[str] = "progress"
    one_shot: ClassVar[bool] = False
    type: Literal["radtrain.task.progress.v1"] = "radtrain.task.progress.v1"
    data: TaskProgress


class TaskCompletedEvent(Envelope):
    name: ClassVar[str] = "completed"
    type: Literal["radtrain.task.completed.v1"] = "radtrain.task.completed.v1"
    data: TaskCompleted


class TaskFailedEvent(Envelope):
    name: ClassVar[str] = "failed"
    type: Literal["radtrain.task.failed.v1"] = "radtrain.task.failed.v1"
    data: TaskFailed


class TaskCancelRequestedEvent(Envelope):
    name: ClassVar[str] = "cancel_requested"
    type: Literal["radtrain.task.cancel_requested.v1"] = "radtrain.task.cancel_requested.v1"
    data: TaskCancelRequested


class TaskCancelledEvent(Envelope):
    name: ClassVar[str] = "cancelled"
    type: Literal["radtrain.task.cancelled.v1"] = "radtrain.task.cancelled.v1"
    data: TaskCancelled


Event = Annotated[
    TaskRequestedEvent
    | TaskReadyEvent
    | TaskRejectedEvent
    | TaskStartedEvent
    | TaskProgressEvent
    | TaskCompletedEvent
    | TaskFailedEvent
    | TaskCancelRequestedEvent
    | TaskCancelledEvent,
    Field(discriminator="type"),
]

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)

EVENT_TYPES: tuple[type[Envelope], ...] = (
    TaskRequestedEvent,
    TaskReadyEvent,
    TaskRejectedEvent,
    TaskStartedEvent,
    TaskProgressEvent,
    TaskCompletedEvent,
    TaskFailedEvent,
    TaskCancelRequestedEvent,
    TaskCancelledEvent,
)


def parse_event(raw: bytes | str) -> Event:
    """Decode one envelope; raises ``pydantic.ValidationError`` naming the bad field."""
    return EVENT_ADAPTER.validate_json(raw)


def encode_event(event: Envelope) -> bytes:
    return event.model_dump_json().encode()
