"""The event envelope (CloudEvents 1.0 attribute names) and every payload.

Each event type is its own model; ``parse_event`` picks the model by ``type``
through a discriminated union, so a consumer gets a typed object or a
validation error that names the field, never a half-parsed dict.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, ClassVar, Literal

from pydantic import ConfigDict, Field, TypeAdapter, model_validator

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


class TaskRedriven(Strict):
    """An on-call engineer re-opened a task (``radtrain dlq redrive``, ``replay --force``):
    the envelope's ``taskgeneration`` is the new generation; events of older generations
    no longer change the task."""

    task_id: Identifier
    by: str
    reason: str = ""
    to_state: Literal["requested", "ready"]
    """The state the task goes back to: the kind of event that is re-published."""
    from_state: str | None = None
    dead_letter_seq: int | None = None
    """The DLQ stream sequence of the letter that was redriven, if any."""


class TaskCancelled(Strict):
    task_id: Identifier
    by: str
    reason: str = ""
    last_checkpoint_epoch: int | None = None
    attempt: int = Field(1, ge=1)


# --- envelopes --------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


EXTENSION_NAME = re.compile(r"^[a-z0-9]{1,20}$")
"""CloudEvents 1.0: extension names are lower-case letters and digits (20 or fewer)."""


class Envelope(Strict):
    """CloudEvents 1.0 as other systems send it: optional core attributes and extension
    attributes are accepted (extensions are kept in ``model_extra`` and carried onto the
    task's later events by :meth:`carry`); unknown *typed* fields stay errors."""

    model_config = ConfigDict(extra="allow", frozen=True)

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(default_factory=lambda: str(uuid.uuid4()), min_length=1)
    source: str = Field(min_length=1)
    subject: Identifier
    time: datetime = Field(default_factory=_now)
    datacontenttype: str = "application/json"
    dataschema: str | None = None
    traceparent: str | None = None
    taskgeneration: int = Field(1, ge=1)
    """radtrain's extension attribute: 1, then +1 each time on-call re-opens the task
    (:class:`TaskRedriven`). Events of an older generation no longer change the task."""

    name: ClassVar[str]
    one_shot: ClassVar[bool] = True

    @model_validator(mode="before")
    @classmethod
    def _subject_from_data(cls, raw: object) -> object:
        """``subject`` is optional in CloudEvents: default it to the payload's task id."""
        if isinstance(raw, dict) and raw.get("subject") is None:
            data = raw.get("data")
            task_id = data.get("task_id") if isinstance(data, dict) else None
            if task_id is not None:
                raw = {**raw, "subject": task_id}
        return raw

    @model_validator(mode="after")
    def _check_attributes(self) -> Envelope:
        media = self.datacontenttype.split(";", 1)[0].strip().lower()
        if media != "application/json" and not media.endswith("+json"):
            raise ValueError(f"datacontenttype {self.datacontenttype!r}: data must be JSON")
        for key, value in (self.model_extra or {}).items():
            if not EXTENSION_NAME.match(key):
                raise ValueError(f"attribute {key!r}: CloudEvents extension names are 1-20 "
                                 "lower-case letters or digits")
            if not isinstance(value, str | int | bool) or isinstance(value, float):
                raise ValueError(f"extension attribute {key!r} must be a string, integer "
                                 f"or boolean, not {type(value).__name__}")
        return self

    @property
    def extensions(self) -> dict[str, str | int | bool]:
        """The extension attributes the sender set (``traceparent`` and
        ``taskgeneration`` are typed fields, not in here)."""
        return dict(self.model_extra or {})

    def carry(self) -> dict[str, object]:
        """Keyword arguments that make a follow-up event of the same task keep this one's
        extension attributes and generation: ``NextEvent(..., **event.carry())``."""
        return {**self.extensions, "taskgeneration": self.taskgeneration}

    @property
    def task_id(self) -> str:
        return self.subject

    @property
    def nats_subject(self) -> str:
        return f"tasks.{self.name}.{self.subject}"

    @property
    def msg_id(self) -> str:
        """Deterministic ``Nats-Msg-Id``: publishing the same fact twice is harmless."""
        if not self.one_shot:
            return self.id
        gen = f":g{self.taskgeneration}" if self.taskgeneration > 1 else ""
        return f"{self.subject}:{self.name}{gen}"


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


class TaskRedrivenEvent(Envelope):
    name: ClassVar[str] = "redriven"
    type: Literal["radtrain.task.redriven.v1"] = "radtrain.task.redriven.v1"
    data: TaskRedriven


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
    | TaskCancelledEvent
    | TaskRedrivenEvent,
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
    TaskRedrivenEvent,
)


def parse_event(raw: bytes | str) -> Event:
    """Decode one envelope; raises ``pydantic.ValidationError`` naming the bad field."""
    return EVENT_ADAPTER.validate_json(raw)


OPTIONAL_ATTRIBUTES = ("dataschema", "traceparent")


def encode_event(event: Envelope) -> bytes:
    """Structured-mode JSON. Optional attributes that are not set are left out rather than
    ``null``: CloudEvents SDKs (the official Python one) refuse a ``null`` attribute."""
    unset = {name for name in OPTIONAL_ATTRIBUTES if getattr(event, name) is None}
    return event.model_dump_json(exclude=unset).encode()
