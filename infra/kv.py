"""Typed access to the KV buckets: TaskRecord and DatasetSummary by id.

Writers use compare-and-set on the revision so two projector instances can
never overwrite each other's newer state.
"""

from __future__ import annotations

from collections.abc import Callable

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from infra.bus.topology import KV_DATASETS, KV_TASKS
from infra.kv_scan import scan
from schemas.dataset import DatasetSummary
from schemas.record import TaskRecord


class TaskRepo:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext) -> TaskRepo:
        return cls(await js.key_value(KV_TASKS))

    async def get(self, task_id: str) -> tuple[TaskRecord, int] | None:
        try:
            entry = await self._kv.get(task_id)
        except KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        return TaskRecord.model_validate_json(entry.value), entry.revision or 0

    async def ids(self) -> list[str]:
        try:
            return list(await self._kv.keys())
        except NoKeysError:
            return []

    async def upsert(
        self, task_id: str, change: Callable[[TaskRecord | None], TaskRecord | None],
        attempts: int = 20,
    ) -> TaskRecord | None:
        """Read, apply ``change``, write with CAS; re-read on a concurrent write."""
        for _ in range(attempts):
            current = await self.get(task_id)
            new = change(current[0] if current else None)
            if new is None:
                return None
            data = new.model_dump_json().encode()
            try:
                if current is None:
                    await self._kv.create(task_id, data)
                else:
                    await self._kv.update(task_id, data, last=current[1])
                return new
            except KeyWrongLastSequenceError:
                continue
        raise RuntimeError(f"task {task_id}: too many concurrent writers")


class DatasetRepo:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext) -> DatasetRepo:
        return cls(await js.key_value(KV_DATASETS))

    async def get(self, dataset_id: str) -> DatasetSummary | None:
        try:
            entry = await self._kv.get(dataset_id)
        except KeyNotFoundError:
            return None
        return DatasetSummary.model_validate_json(entry.value) if entry.value else None

    async def put(self, summary: DatasetSummary) -> None:
        await self._kv.put(summary.id, summary.model_dump_json().encode())

    async def list(self, tenant: str | None = None) -> list[DatasetSummary]:
        """Every summary (of one tenant), read in one pass; a malformed entry is skipped."""
        out = []
        for value in (await scan(self._kv)).values():
            try:
                summary = DatasetSummary.model_validate_json(value)
            except ValidationError:
                continue
            if tenant is None or summary.tenant == tenant:
                out.append(summary)
        return out
