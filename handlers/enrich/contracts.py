"""What the enrich handler's parts share: its inputs beyond the request, and its one error.

Pure: the weights index and the retrain's base task are handed in (loaded by
``handlers/enrich/handler.py``), so every resolver is testable without NATS
or a store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from schemas.common import ErrorDetail
from schemas.spec import TrainingSpec


@dataclass(frozen=True)
class WeightsRef:
    """A mirrored weights file: its store key and sha256 (the runner re-checks it)."""

    key: str
    sha256: str


class WeightsIndex(Protocol):
    def find(self, entry_id: str) -> WeightsRef | None: ...


@dataclass(frozen=True)
class BaseTask:
    """What a retrain needs of its base task, as read from KV ``tasks`` and the store."""

    task_id: str
    tenant: str
    state: str
    spec: TrainingSpec | None = None
    """``spec.json`` at the key its artifact record names (``runs/<task_id>/attempts/<n>/``,
    the attempt that completed the task), checked against the recorded sha256."""
    weights_key: str | None = None
    weights_sha256: str | None = None
    """``model.safetensors`` as recorded in ``task.completed``; the runner re-checks it."""


class Rejected(Exception):
    """Every reason a request cannot become a TrainingSpec, in one round trip."""

    def __init__(self, errors: list[ErrorDetail]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors


def err(field: str, code: str, message: str) -> ErrorDetail:
    return ErrorDetail(field=field, code=code, message=message)
