"""HTTP response shapes shared by the gateway and its clients."""

from __future__ import annotations

from typing import Generic, TypeVar

from pydantic import BaseModel

from schemas.common import Strict
from schemas.record import TaskRecord, TaskState

T = TypeVar("T")


class TaskAccepted(Strict):
    task_id: str
    state: TaskState = "requested"


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int


class ErrorItem(Strict):
    field: str
    message: str


class ErrorInfo(Strict):
    code: str
    message: str
    details: list[ErrorItem] = []


class ErrorBody(Strict):
    error: ErrorInfo


class TaskPage(Page[TaskRecord]):
    """A concrete page type: OpenAPI component names cannot carry ``[...]``."""
