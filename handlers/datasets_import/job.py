"""The dataset-import job: ``imports.jobs.<tenant>.<id>`` → the pipeline → KV status.

``POST /v1/datasets/imports`` (and ``radtrain datasets import``) only write a
queued status and publish an :class:`~schemas.dataset_import.ImportJob`; this
handler, a durable consumer of the handlers process, does the work:

1. a job already finished in KV is acked without running again (a redelivery
   after the handlers process died between the last write and the ack);
2. the status goes to ``running`` with this delivery as its ``attempt``;
3. the source (``imports/<tenant>/<source>/``) is copied to a temporary
   folder and the pipeline (parse → validate → upload → register) runs on it,
   its blocking parts in worker threads, so the other consumers of the process
   are never held up; a ticker meanwhile writes progress to KV at most every
   ``import_progress_interval_s`` and sends ``in_progress`` every
   ``import_heartbeat_s`` so the ack wait never runs out on a long import;
4. the full report goes to the store (``dataset-imports/<tenant>/<id>/
   report.json``: it may list 200,000 problems, more than a KV value holds)
   and the status to ``completed`` (registered) or ``failed`` (every problem
   in the report), then the message is acked.

Retries are safe: images are uploaded under content-addressed keys, every
attempt registers the same dataset id (chosen from the job id when the request
names none), and a dataset this job registered before it died is re-registered
in place. A store or NATS hiccup is a ``TransientError`` (nak, retry on the
consumer's schedule); on the last delivery, or for a problem retrying cannot
fix (no source, too many objects), the status becomes ``failed`` and the
message is terminated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import nats.errors

from handlers.datasets_import.base import ImportOptions
from handlers.datasets_import.pipeline import import_dataset, new_dataset_id
from imaging.budget import DecodeBudget, set_default_budget
from infra.bus.subscriber import Delivery, Subscriber, model_decoder
from infra.bus.topology import DATASET_IMPORT
from infra.dataset_imports import IMPORTS_PREFIX, ImportRepo, source_prefix
from infra.errors import Fenced, PermanentError, TransientError
from infra.kv import DatasetRepo
from infra.settings import Settings
from infra.store import InvalidKey, ObjectStore, StoreError
from schemas.dataset_import import (
    ImportFailure,
    ImportJob,
    ImportPhase,
    ImportProgress,
    ImportReport,
    ImportStatus,
)
from schemas.events import Envelope

log = logging.getLogger(__name__)

REPORTS_PREFIX = "dataset-imports"
DOWNLOAD_WORKERS = 8
RETRYABLE_PROBLEMS = frozenset({"upload_failed"})
"""Report problems caused by the store, not the data: the job is retried for them."""


def report_key(tenant: str, import_id: str) -> str:
    return f"{REPORTS_PREFIX}/{tenant}/{import_id}/report.json"


def dataset_id_of(job: ImportJob) -> str:
    """The request's id, or one derived from the job: the same for every attempt."""
    return job.request.dataset_id or new_dataset_id(job.request.name, job.import_id)


class _Tracker:
    """The latest progress, set by worker threads, read by the ticker on the event loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fields: dict[str, Any] = ImportProgress().model_dump()
        self.version = 0

    def set(self, phase: ImportPhase, done: int, total: int, **counts: int) -> None:
        """Worker threads report out of order: within a phase, counts never go back.

        Called once per case: plain numbers here, the model only in ``snapshot``
        (read once per progress interval).
        """
        with self._lock:
            old = self._fields
            if old["phase"] == phase:
                done = max(done, old["done"])
                counts = {k: max(v, old[k]) for k, v in counts.items()}
            old.update(phase=phase, done=done, total=total, **counts)
            self.version += 1

    def __call__(self, phase: ImportPhase, done: int, total: int) -> None:
        """The pipeline's ``progress`` callback."""
        counts = {"checking": {"checked": done}, "uploading": {"uploaded": done}}
        self.set(phase, done, total, **counts.get(phase, {}))

    def files(self, done: int, total: int) -> None:
        self.set("downloading", done, total, files=done)

    def snapshot(self) -> tuple[int, ImportProgress]:
        with self._lock:
            return self.version, ImportProgress(**self._fields)


@dataclass(frozen=True)
class SourceCaps:
    """What an import may copy (issue 17), checked from the listing before any copy."""

    max_objects: int
    max_object_bytes: int = 1 << 30
    max_total_bytes: int = 50 << 30

    @classmethod
    def of(cls, settings: Settings) -> SourceCaps:
        return cls(settings.import_max_objects, settings.import_max_object_bytes,
                   settings.import_max_total_bytes)


def source_objects(store: ObjectStore, prefix: str, caps: SourceCaps) -> list[str]:
    """The keys to copy: S3 "folder" markers (``.../`` keys, as consoles create them) left
    out; more objects, a larger object or more bytes than ``caps`` fail permanently."""
    listed = store.list_sizes(prefix + "/")
    entries = [(k, n) for k, n in listed if not k.endswith("/")]
    if len(entries) > caps.max_objects:
        raise PermanentError("too_many_objects",
                             f"{len(entries)} objects in the source; at most {caps.max_objects}")
    for key, size in entries:
        if size > caps.max_object_bytes:
            raise PermanentError("object_too_large", f"{key[len(prefix) + 1:]} is {size} "
                                 f"bytes; one object may have at most {caps.max_object_bytes}")
    total = sum(n for _, n in entries)
    if total > caps.max_total_bytes:
        raise PermanentError("source_too_large", f"the source holds {total} bytes; an import "
                             f"may copy at most {caps.max_total_bytes}")
    return [k for k, _ in entries]


def download_prefix(store: ObjectStore, prefix: str, dest: Path,
                    progress: Callable[[int, int], None], max_objects: int | SourceCaps) -> int:
    """Copy every object under ``prefix/`` into ``dest``, keeping the relative layout."""
    caps = max_objects if isinstance(max_objects, SourceCaps) else SourceCaps(max_objects)
    keys = source_objects(store, prefix, caps)
    done, lock = 0, threading.Lock()
    progress(0, len(keys))

    def fetch(key: str) -> None:
        nonlocal done
        try:
            store.get_file(key, dest.joinpath(*key[len(prefix) + 1:].split("/")))
        except InvalidKey as exc:  # e.g. "a//b": no retry makes it copyable
            raise PermanentError("invalid_source_key", f"object {key[len(prefix) + 1:]!r} "
                                 "has a name that cannot be imported") from exc
        with lock:
            done += 1
            count = done
        progress(count, len(keys))

    with ThreadPoolExecutor(DOWNLOAD_WORKERS) as pool:
        list(pool.map(fetch, keys))
    return len(keys)


def _delete_prefix(store: ObjectStore, prefix: str) -> None:
    with ThreadPoolExecutor(DOWNLOAD_WORKERS) as pool:
        list(pool.map(store.delete, [k for k in store.list(prefix + "/") if not k.endswith("/")]))


def _now() -> datetime:
    return datetime.now(UTC)


async def _kv(call: Awaitable[Any]) -> Any:
    """A KV call; NATS unavailable is transient."""
    try:
        return await call
    except (nats.errors.Error, TimeoutError) as exc:
        raise TransientError("kv_unavailable", f"KV dataset_imports: {exc!r}") from exc


async def handle_import_job(
    job: ImportJob, delivery: Delivery, *, store: ObjectStore, datasets: DatasetRepo,
    imports: ImportRepo, settings: Settings,
) -> Sequence[Envelope]:
    """Run one import job to its end; no task events (``[]``): its outcome is the KV status."""
    found = await _kv(imports.get(job.tenant, job.import_id))
    if found is not None and found[0].finished:
        log.info("import %s already %s; not running it again", job.import_id, found[0].state)
        return []
    first_start = found[0].started_at if found is not None else None
    dataset_id = dataset_id_of(job)
    await _kv(imports.update(job.tenant, job.import_id,
                             partial(_started, job, delivery.attempt, dataset_id)))
    tracker = _Tracker()
    ticker = asyncio.create_task(_keep_alive(job, delivery, imports, tracker, settings))
    try:
        opts = ImportOptions.from_request(
            job.request, job.tenant, dataset_id=dataset_id,
            replace=job.request.replace or await _ours(datasets, job, dataset_id, first_start),
            upload_workers=settings.import_upload_workers,
            header_workers=settings.import_header_workers,
            header_pool_min=settings.import_header_pool_min)
        report = await _run(job, opts, store, datasets, tracker, settings)
        retry = [p for p in report.problems if p.code in RETRYABLE_PROBLEMS]
        if retry and not delivery.plan.is_last(delivery.attempt):
            raise TransientError(retry[0].code, f"{len(retry)} cases: {retry[0].message}")
    except PermanentError as exc:
        await _finish(imports, job, delivery.attempt, store, None,
                      ImportFailure(code=exc.code, message=exc.message))
        raise
    except Exception as exc:  # transient or unexpected: retried until the last delivery
        if not delivery.plan.is_last(delivery.attempt):
            raise
        code = exc.code if isinstance(exc, TransientError) else "import_error"
        if not isinstance(exc, TransientError):  # the detail is for the log, not the client
            log.error("import %s: unexpected error", job.import_id, exc_info=exc)
        message = exc.message if isinstance(exc, TransientError) else type(exc).__name__
        failure = ImportFailure(code=code, message=f"gave up after {delivery.attempt} "
                                f"attempts: {message}")
        await _finish(imports, job, delivery.attempt, store, None, failure)
        raise PermanentError(code, failure.message) from exc
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
    await _finish(imports, job, delivery.attempt, store, report, None, tracker.snapshot()[1])
    if job.delete_source:
        try:
            await asyncio.to_thread(_delete_prefix, store,
                                    source_prefix(job.tenant, job.request.source))
        except StoreError as exc:  # the import is done; a stale upload is only clutter
            log.warning("import %s: could not delete its source: %s", job.import_id, exc)
    return []


def _started(job: ImportJob, attempt: int, dataset_id: str,
             current: ImportStatus | None) -> ImportStatus | None:
    now = _now()
    if current is None:  # the status expired or was never written (a job published by hand)
        current = ImportStatus(import_id=job.import_id, tenant=job.tenant, state="queued",
                               request=job.request, created_at=job.submitted_at,
                               updated_at=now)
    if current.finished:
        return None
    if current.attempt > attempt:
        raise Fenced(f"import {job.import_id}: delivery {current.attempt} owns it")
    return current.model_copy(update={
        "state": "running", "attempt": attempt, "dataset_id": dataset_id,
        "progress": ImportProgress(), "started_at": current.started_at or now,
        "updated_at": now, "error": None})


async def _ours(datasets: DatasetRepo, job: ImportJob, dataset_id: str,
                first_start: datetime | None) -> bool:
    """Whether an earlier attempt of this job registered ``dataset_id`` before it died."""
    if first_start is None:
        return False
    try:
        existing = await datasets.get(dataset_id)
    except (nats.errors.Error, TimeoutError) as exc:
        raise TransientError("kv_unavailable", f"KV datasets: {exc!r}") from exc
    return (existing is not None and existing.tenant == job.tenant
            and existing.created_at is not None and existing.created_at >= first_start)


async def _run(job: ImportJob, opts: ImportOptions, store: ObjectStore, datasets: DatasetRepo,
               tracker: _Tracker, settings: Settings) -> ImportReport:
    try:
        prefix = source_prefix(job.tenant, job.request.source)
    except InvalidKey as exc:
        raise PermanentError("invalid_source", f"source: {exc}") from exc
    tmp = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="radtrain-import-"))
    try:
        try:
            count = await asyncio.to_thread(download_prefix, store, prefix, tmp, tracker.files,
                                            SourceCaps.of(settings))
        except StoreError as exc:
            raise TransientError("store_unavailable", f"reading the source: {exc}") from exc
        if count == 0:
            raise PermanentError("missing_source", f"nothing under {job.request.source!r} in "
                                 f"{IMPORTS_PREFIX}/{job.tenant}/")
        try:
            return await import_dataset(store, datasets, tmp, opts, tracker)
        except StoreError as exc:
            raise TransientError("store_unavailable", str(exc)) from exc
        except (nats.errors.Error, TimeoutError) as exc:
            raise TransientError("kv_unavailable", f"KV datasets: {exc!r}") from exc
    finally:
        await asyncio.to_thread(shutil.rmtree, tmp, True)


async def _keep_alive(job: ImportJob, delivery: Delivery, imports: ImportRepo,
                      tracker: _Tracker, settings: Settings) -> None:
    """Progress to KV (changed values only, at most every interval) and heartbeats."""
    interval = max(settings.import_progress_interval_s, 0.05)
    last_beat = time.monotonic()
    written = 0
    while True:
        await asyncio.sleep(min(interval, settings.import_heartbeat_s))
        if time.monotonic() - last_beat >= settings.import_heartbeat_s:
            last_beat = time.monotonic()
            try:
                await delivery.in_progress()
            except Exception as exc:  # the next beat may get through; the ack wait is 4x
                log.warning("import %s: in_progress failed: %r", job.import_id, exc)
        version, progress = tracker.snapshot()
        if version == written:
            continue
        try:
            await imports.update(job.tenant, job.import_id,
                                 partial(_progressed, delivery.attempt, progress))
            written = version
        except Fenced:
            log.warning("import %s: a newer delivery owns it", job.import_id)
        except Exception as exc:  # progress is advisory; the final write is not
            log.warning("import %s: progress write failed: %r", job.import_id, exc)


def _progressed(attempt: int, progress: ImportProgress,
                current: ImportStatus | None) -> ImportStatus | None:
    if current is None or current.finished or current.attempt != attempt:
        return None
    return current.model_copy(update={"progress": progress, "updated_at": _now()})


async def _finish(imports: ImportRepo, job: ImportJob, attempt: int, store: ObjectStore,
                  report: ImportReport | None, failure: ImportFailure | None,
                  final: ImportProgress | None = None) -> None:
    """The final status; the report (if any) is stored first, so a reader finds it."""
    key = None
    if report is not None:
        key = report_key(job.tenant, job.import_id)
        try:
            await asyncio.to_thread(store.put_bytes, key, report.model_dump_json().encode(),
                                    "application/json")
        except StoreError as exc:
            raise TransientError("store_unavailable", f"writing the report: {exc}") from exc
        if not report.registered:
            exists = any(p.code == "dataset_exists" for p in report.problems)
            failure = ImportFailure(
                code="dataset_exists" if exists else "dataset_invalid",
                message=f"dataset {report.dataset_id!r} was not registered: "
                        f"{len(report.problems)} problems")

    def change(current: ImportStatus | None) -> ImportStatus | None:
        if current is not None and current.attempt > attempt and not current.finished:
            raise Fenced(f"import {job.import_id}: delivery {current.attempt} owns it")
        if current is not None and current.finished:
            return None
        now = _now()
        base = current or ImportStatus(import_id=job.import_id, tenant=job.tenant,
                                       state="queued", request=job.request,
                                       created_at=job.submitted_at, updated_at=now)
        # The last counts, not the last rate-limited write of them.
        done = (final or base.progress).model_copy(update={"phase": "done"})
        return base.model_copy(update={
            "state": "failed" if failure is not None else "completed",
            "attempt": attempt, "progress": done, "updated_at": now, "finished_at": now,
            "started_at": base.started_at or now, "error": failure, "report_key": key,
            "num_problems": len(report.problems) if report is not None else 0,
            "summary": report.summary if report is not None else None,
            "dataset_id": report.dataset_id if report is not None else base.dataset_id})

    await _kv(imports.update(job.tenant, job.import_id, change))
    log.info("import %s %s", job.import_id, "failed" if failure else "completed")


def import_subscriber(*, store: ObjectStore, datasets: DatasetRepo, imports: ImportRepo,
                      settings: Settings) -> Subscriber[ImportJob]:
    """The handlers process's consumer of import jobs: one job at a time per process.

    Its decoding (checking compressed images) runs under the process's decoding
    budget, set here from the settings (imaging/budget.py)."""
    set_default_budget(DecodeBudget(settings.decode_budget_request_bytes,
                                    settings.decode_budget_process_bytes,
                                    settings.decode_budget_wait_s))
    return Subscriber(durable=DATASET_IMPORT, decode=model_decoder(ImportJob),
                      handle=partial(handle_import_job, store=store, datasets=datasets,
                                     imports=imports, settings=settings), batch=1)


__all__ = ["handle_import_job", "import_subscriber", "report_key", "source_prefix"]
