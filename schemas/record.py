"""TaskRecord: the read model in KV ``tasks``, and the forward-only state order."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from schemas.common import ErrorDetail, Identifier, Strict
from schemas.events import Artifact, TaskProgress, TaskRedriven

TaskState = Literal[
    "requested", "ready", "rejected", "running", "completed", "failed", "cancelled"
]

STATE_RANK: dict[str, int] = {
    "requested": 0,
    "ready": 1,
    "rejected": 1,
    "running": 2,
    "completed": 3,
    "failed": 3,
    "cancelled": 3,
}
TERMINAL_STATES = frozenset({"rejected", "completed", "failed", "cancelled"})


class TaskRecord(Strict):
    task_id: Identifier
    tenant: Identifier
    name: str
    state: TaskState
    flow: str
    task_type: str | None = None
    dataset_id: str
    network: str | None = None
    created_at: datetime
    updated_at: datetime
    attempt: int = 0
    runner_id: str | None = None
    progress: TaskProgress | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    artifacts: list[Artifact] = Field(default_factory=list)
    errors: list[ErrorDetail] = Field(default_factory=list)
    duration_s: float | None = None
    cancel_requested: bool = False
    generation: int = 1
    """Bumped by each ``task.redriven``: events of older generations are ignored."""
    redrives: list[TaskRedriven] = Field(default_factory=list)
    """Every time on-call re-opened the task, oldest first (who, why, from which state)."""
    parent_task_id: Identifier | None = None
    """A search trial's parent task (issue 18); its trials: ``GET /v1/tasks?parent=<id>``."""
