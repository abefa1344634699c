"""HTTP response shapes shared by the gateway and its clients."""

from __future__ import annotations

from typing import Generic, TypeVar

from pydantic import BaseModel, Field

from schemas.common import Strict
from schemas.record import TaskRecord, TaskState

T = TypeVar("T")


class TaskAccepted(Strict):
    task_id: str
    state: TaskState = "requested"


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int


class CursorPage(Page[T], Generic[T]):
    """A page of a listing that also pages by cursor: pass ``next`` back as ``cursor``
    for the page after this one (``None`` on the last page). Unlike ``offset``, a cursor
    neither repeats nor skips an item when newer ones are added meanwhile."""

    next: str | None = None


class ErrorItem(Strict):
    field: str
    message: str


class ErrorInfo(Strict):
    code: str
    message: str
    details: list[ErrorItem] = []


class ErrorBody(Strict):
    error: ErrorInfo


class TaskPage(CursorPage[TaskRecord]):
    """A concrete page type: OpenAPI component names cannot carry ``[...]``."""


class CancelRequest(Strict):
    """``POST /v1/tasks/{id}/cancel`` body (optional): why, for the record and webhooks."""

    reason: str = Field("", max_length=1000)


class CancelAccepted(Strict):
    task_id: str
    state: TaskState
    """The state when the request was accepted; ``cancelled`` follows once a runner stops."""
    cancel_requested: bool = True


class ArtifactLink(Strict):
    """One file of a finished task, with where to download it."""

    name: str
    key: str
    sha256: str
    size: int
    url: str
    """The object store's presigned URL; for the local store, the gateway's own download
    route (``href``): a server path (file://) is never shown (issue 17)."""
    href: str
    """The gateway's own tenant-checked download route."""


class ArtifactPage(Page[ArtifactLink]):
    pass
