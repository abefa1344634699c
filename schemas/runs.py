"""RunLedger: KV ``runs``, task id -> the one attempt that owns the task's training.

Attempts are numbered per task (never per message delivery, never reused across
generations). A runner claims a task by compare-and-set on this record; every
state change after that is a compare-and-set naming the attempt, so a stale
attempt (stalled past the ack wait, replaced, then woken) can change nothing:
its checkpoint writes are refused, and its completion finds another attempt
named here. Written only by runners (runner/ownership.py decides, the worker
writes).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from schemas.common import Identifier, Strict
from schemas.events import TaskCancelled, TaskCompleted, TaskFailed

RunState = Literal["running", "preempted", "completed", "failed", "cancelled"]
FINISHED_RUN_STATES = frozenset({"completed", "failed", "cancelled"})


class RunLedger(Strict):
    task_id: Identifier
    generation: int = Field(1, ge=1)
    """The ``taskgeneration`` of the ``task.ready`` that owns the run."""
    attempt: int = Field(ge=1)
    """The last attempt claimed: 1, 2, ... per task, across generations."""
    owner_seq: int | None = None
    """Stream sequence of the ``task.ready`` message that owns the current generation: its
    redelivery is a retry of the run, any other ``task.ready`` a duplicate."""
    runner_id: str
    """The runner process of ``attempt``."""
    state: RunState
    failures: int = Field(0, ge=0)
    """Attempts of this generation that crashed, stalled or hit an unexpected error."""
    preemptions: int = Field(0, ge=0)
    """Graceful stops (SIGTERM, preemption) of this generation: they cost no failure."""
    committed: TaskCompleted | None = None
    """The completion, once ``completed``: a redelivery after the commit republishes it."""
    outcome: TaskFailed | TaskCancelled | None = None
    """What a ``failed`` / ``cancelled`` run published, republished the same way."""
    updated_at: datetime

    def names(self, attempt: int, generation: int) -> bool:
        """This record names ``attempt`` (of ``generation``) as the running owner."""
        return (self.state == "running" and self.attempt == attempt
                and self.generation == generation)
