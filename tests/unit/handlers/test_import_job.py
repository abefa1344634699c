"""The dataset-import job handler with fakes: no NATS, a local store in a temp folder."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest

from handlers.datasets_import.job import handle_import_job, report_key
from infra.bus.consumer import RetryPlan
from infra.bus.subscriber import Delivery
from infra.dataset_imports import queued_status, status_key
from infra.errors import PermanentError, TransientError
from infra.settings import Settings
from infra.store import ObjectStore, StoreError, open_store
from schemas.dataset import DatasetSummary
from schemas.dataset_import import ImportJob, ImportReport, ImportRequest, ImportStatus
from tests.support.dataset_utils import classification_folder

TENANT = "acme"


class FakeImports:
    """ImportRepo in memory; every write is kept, in order."""

    def __init__(self) -> None:
        self.values: dict[str, tuple[ImportStatus, int]] = {}
        self.writes: list[ImportStatus] = []

    async def get(self, tenant: str, import_id: str) -> tuple[ImportStatus, int] | None:
        return self.values.get(status_key(tenant, import_id))

    async def create(self, status: ImportStatus) -> bool:
        key = status_key(status.tenant, status.import_id)
        if key in self.values:
            return False
        self._write(key, status, 0)
        return True

    async def update(self, tenant: str, import_id: str,
                     change: Callable[[ImportStatus | None], ImportStatus | None]
                     ) -> ImportStatus | None:
        key = status_key(tenant, import_id)
        current = self.values.get(key)
        new = change(current[0] if current else None)
        if new is not None:
            self._write(key, new, current[1] if current else 0)
        return new

    def _write(self, key: str, status: ImportStatus, revision: int) -> None:
        self.values[key] = (status, revision + 1)
        self.writes.append(status)

    def status(self, import_id: str) -> ImportStatus:
        return self.values[status_key(TENANT, import_id)][0]


class FakeDatasets:
    def __init__(self) -> None:
        self.values: dict[str, DatasetSummary] = {}
        self.puts = 0

    async def get(self, dataset_id: str) -> DatasetSummary | None:
        return self.values.get(dataset_id)

    async def put(self, summary: DatasetSummary) -> None:
        self.values[summary.id] = summary
        self.puts += 1


class SlowStore:
    """The local store, each object read or write taking ``delay_s`` (a remote store)."""

    def __init__(self, inner: ObjectStore, delay_s: float = 0.0) -> None:
        self.inner, self.delay_s = inner, delay_s
        self.fail_list = False
        self.puts = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def list(self, prefix: str) -> list[str]:
        if self.fail_list:
            raise StoreError("store down")
        return self.inner.list(prefix)

    def list_sizes(self, prefix: str) -> list[tuple[str, int]]:
        if self.fail_list:
            raise StoreError("store down")
        return list(self.inner.list_sizes(prefix))

    def get_file(self, key: str, path: Path) -> Path:
        time.sleep(self.delay_s)
        return self.inner.get_file(key, path)

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> Any:
        time.sleep(self.delay_s)
        self.puts += 1
        return self.inner.put_file(key, path, content_type)

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None,
                  **kwargs: Any) -> Any:
        """Images up to the inline size are stored from memory (pipeline._store_image)."""
        time.sleep(self.delay_s)
        self.puts += 1
        return self.inner.put_bytes(key, data, content_type, **kwargs)


class FakeMsg:
    def __init__(self) -> None:
        self.beats = 0

    async def in_progress(self) -> None:
        self.beats += 1


def delivery(attempt: int = 1, msg: FakeMsg | None = None) -> Delivery:
    return Delivery(subject=f"imports.jobs.{TENANT}.x", attempt=attempt,
                    plan=RetryPlan(stream="IMPORTS", consumer="dataset-import", max_deliver=3),
                    msg=cast(Any, msg or FakeMsg()))


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Any]:
    settings = Settings(store_dir=tmp_path / "store", import_progress_interval_s=0.05,
                        import_heartbeat_s=0.05)
    return {"settings": settings, "store": SlowStore(open_store(settings)),
            "imports": FakeImports(), "datasets": FakeDatasets(), "tmp": tmp_path}


def upload(world: dict[str, Any], root: Path, source: str) -> None:
    store = world["store"].inner
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        store.put_file(f"imports/{TENANT}/{source}/{path.relative_to(root).as_posix()}", path)


async def submit(world: dict[str, Any], source: str, import_id: str, **body: Any) -> ImportJob:
    job = ImportJob(import_id=import_id, tenant=TENANT, submitted_at=datetime.now(UTC),
                    request=ImportRequest(name="head CT", format="folder-csv", source=source,
                                          **body))
    await world["imports"].create(queued_status(job))
    return job


async def run(world: dict[str, Any], job: ImportJob, d: Delivery) -> Any:
    return await handle_import_job(job, d, store=world["store"], datasets=world["datasets"],
                                   imports=world["imports"], settings=world["settings"])


async def test_progress_is_written_at_most_every_interval_and_heartbeats_sent(
        world: dict[str, Any]) -> None:
    upload(world, classification_folder(world["tmp"] / "src", n=40), "batch")
    world["store"].delay_s = 0.02  # ~0.1 s download, ~0.1 s upload with 16 workers
    job = await submit(world, "batch", "job1")
    msg = FakeMsg()
    gaps: list[float] = []

    async def loop_watch() -> None:  # the other consumers of the process
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            gaps.append(time.monotonic() - last)
            last = time.monotonic()

    watcher = asyncio.create_task(loop_watch())
    started = time.monotonic()
    assert await run(world, job, delivery(1, msg)) == []
    elapsed = time.monotonic() - started
    watcher.cancel()

    writes: list[ImportStatus] = world["imports"].writes
    assert [w.state for w in writes][:2] == ["queued", "running"]
    progress = [w for w in writes if w.state == "running"][1:]
    assert progress, "no progress written"
    phases = [p.progress.phase for p in progress]
    assert "downloading" in phases or "checking" in phases or "uploading" in phases
    assert len(progress) <= elapsed / 0.05 + 2  # rate-limited, not one write per case
    assert all(p.progress.done <= p.progress.total for p in progress)
    assert msg.beats >= 1
    assert max(gaps) < 0.5, f"the event loop was held up for {max(gaps):.2f}s"

    final = world["imports"].status("job1")
    assert final.state == "completed" and final.finished_at and final.started_at
    assert final.progress.phase == "done" and final.progress.uploaded == 40
    assert final.progress.checked == 40 and final.progress.files == 41
    assert final.summary is not None and final.summary.num_cases == 40
    assert final.dataset_id == final.summary.id == "head-ct-job1"
    report = ImportReport.model_validate_json(
        world["store"].inner.get_bytes(report_key(TENANT, "job1")))
    assert report.registered and report.num_cases == 40 and final.report_key


async def test_a_completed_job_is_not_run_again_on_redelivery(world: dict[str, Any]) -> None:
    upload(world, classification_folder(world["tmp"] / "src", n=4), "b")
    job = await submit(world, "b", "job2")
    await run(world, job, delivery(1))
    puts, writes = world["store"].puts, len(world["imports"].writes)
    assert await run(world, job, delivery(2)) == []
    assert world["store"].puts == puts and len(world["imports"].writes) == writes
    assert world["datasets"].puts == 1


async def test_a_job_killed_after_registering_completes_on_redelivery(
        world: dict[str, Any]) -> None:
    upload(world, classification_folder(world["tmp"] / "src", n=4), "b")
    job = await submit(world, "b", "job3", dataset_id="killed")
    await run(world, job, delivery(1))
    # the handlers process died after registering, before the final status: as it left it
    imports: FakeImports = world["imports"]
    running = [w for w in imports.writes if w.state == "running"][-1]
    imports.values[status_key(TENANT, "job3")] = (running, 99)
    assert await run(world, job, delivery(2)) == []
    final = imports.status("job3")
    assert final.state == "completed" and final.attempt == 2, final.error
    assert final.summary is not None and final.summary.id == "killed"


async def test_a_bad_case_fails_the_import_with_its_case_in_the_report(
        world: dict[str, Any]) -> None:
    root = classification_folder(world["tmp"] / "src", n=4)
    (root / "images" / "c2.dcm").write_bytes(b"\x00" * 10)
    upload(world, root, "bad")
    job = await submit(world, "bad", "job4")
    assert await run(world, job, delivery(1)) == []  # acked: the job did its work
    final = world["imports"].status("job4")
    assert final.state == "failed" and final.error is not None
    assert final.error.code == "dataset_invalid" and final.num_problems == 1
    report = ImportReport.model_validate_json(
        world["store"].inner.get_bytes(report_key(TENANT, "job4")))
    assert [(p.code, p.case_id) for p in report.problems] == [("not_image", "c2")]
    assert not world["datasets"].values


async def test_a_permanent_error_writes_failed_and_terminates(world: dict[str, Any]) -> None:
    job = await submit(world, "nothing-here", "job5")
    with pytest.raises(PermanentError) as err:
        await run(world, job, delivery(1))
    assert err.value.code == "missing_source"
    final = world["imports"].status("job5")
    assert final.state == "failed" and final.error is not None
    assert final.error.code == "missing_source" and final.finished_at is not None


async def test_a_transient_error_retries_then_fails_on_the_last_delivery(
        world: dict[str, Any]) -> None:
    upload(world, classification_folder(world["tmp"] / "src", n=2), "b")
    job = await submit(world, "b", "job6")
    world["store"].fail_list = True
    with pytest.raises(TransientError):
        await run(world, job, delivery(1))
    assert world["imports"].status("job6").state == "running"
    with pytest.raises(PermanentError):
        await run(world, job, delivery(3))
    final = world["imports"].status("job6")
    assert final.state == "failed" and final.error is not None
    assert final.error.code == "store_unavailable" and "3 attempts" in final.error.message
