"""Import = parse -> validate -> upload -> register, all or nothing (DESIGN.md §6).

Nothing is registered unless every check passed (or ``skip_bad`` set the bad
cases aside, recorded in the manifest). Images are uploaded under
content-addressed keys, ``cases/<case_id>/<sha256[:16]>-<name>``: a later
re-import never overwrites the bytes an earlier manifest snapshot points at,
so a task trains on exactly the data it was enriched with; a retried import
writes the same keys again, so a redelivered import job is harmless.

``progress(phase, done, total)`` is called from worker threads as cases are
checked (``checking``) and stored (``uploading``); it must be cheap and must
not touch an event loop (the job handler only records the numbers).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from pydantic import ValidationError

from handlers.datasets_import import coco, folder_csv, headers, masks, rsna, rsna_pe, siim
from handlers.datasets_import.base import (
    Candidate,
    ImportAbort,
    ImportOptions,
    Parsed,
    Problem,
)
from handlers.datasets_import.register import register_dataset
from handlers.datasets_import.series_step import apply_series
from handlers.datasets_import.stats import dataset_stats
from handlers.datasets_import.validate import Validated, ValidCase, validate
from imaging.reader import CaseReadError, ImageHeader
from infra.kv import DatasetRepo
from infra.store import DeferredSync, ObjectStore, StoreError
from schemas.dataset import Case, DatasetManifest, case_key
from schemas.dataset_import import ImportFormat, ImportPhase, ImportReport

Progress = Callable[[ImportPhase, int, int], None]
"""``(phase, done, total)``, called from worker threads."""

PARSERS: dict[ImportFormat, Callable[[Path, ImportOptions], Parsed]] = {
    "folder-csv": folder_csv.parse,
    "rsna-ich": rsna.parse,
    "rsna-pe": rsna_pe.parse,
    "coco": coco.parse,
    "masks": masks.parse,
    "siim-rle": siim.parse,
}
INLINE_MAX_BYTES = 8 * 1024 * 1024
"""Images up to this size are read once, hashed in memory and stored from there."""
_CONTENT_TYPES = {"dicom": "application/dicom", "png": "image/png", "jpeg": "image/jpeg"}
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def new_dataset_id(name: str, suffix: str | None = None) -> str:
    """A readable, collision-resistant id: ``<slug of the name>-<8 hex>``.

    ``suffix`` (an import job's id) makes it deterministic: every attempt of
    one job registers the same dataset id.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40].strip("-") or "dataset"
    return f"{slug}-{(suffix or uuid.uuid4().hex)[:8]}"


def _no_progress(phase: ImportPhase, done: int, total: int) -> None:
    pass


class _Counter:
    """Counts finished items from several threads and reports each step."""

    def __init__(self, phase: ImportPhase, total: int, progress: Progress) -> None:
        self.phase, self.total, self.progress = phase, total, progress
        self.done = 0
        self._lock = threading.Lock()
        progress(phase, 0, total)

    def step(self) -> None:
        with self._lock:
            self.done += 1
            done = self.done
        self.progress(self.phase, done, self.total)


def prepare(root: Path, opts: ImportOptions, progress: Progress | None = None
            ) -> Validated | Problem:
    """Parse and validate a local source folder; a source that cannot be parsed is one Problem."""
    if not root.is_dir():
        return Problem("missing_source", f"source folder {root.name!r} does not exist")
    root = root.resolve()  # once: every path below is built from it, none resolved again
    try:
        parsed = PARSERS[opts.format](root, opts)
    except ImportAbort as exc:
        return exc.problem

    def read_headers(cands: list[Candidate]) -> list[list[ImageHeader] | CaseReadError]:
        counter = _Counter("checking", len(cands), progress or _no_progress)
        return headers.read_all(cands, opts, root, counter.step)

    checked = validate(parsed, opts, root, read_headers)
    apply_series(checked, parsed.exams)  # slice order, series, patients, body parts
    return checked


def upload_cases(store: ObjectStore, dataset_id: str, cases: list[ValidCase],
                 progress: Progress | None = None, workers: int = 16
                 ) -> tuple[list[Case], list[Problem]]:
    """Upload every image and mask (in parallel: the store is I/O bound); build the Cases.

    ``workers`` threads (this one among them) take the next case from one shared
    iterator and write its result in place: no future and no wake-up of this
    thread per case, which on small images cost as much as the thread's own
    Python work. An unexpected error stops the others and is raised here.
    """
    counter = _Counter("uploading", len(cases), progress or _no_progress)
    results: list[Case | Problem | None] = [None] * len(cases)
    todo = iter(enumerate(cases))  # ``next`` on it is atomic under the GIL
    failed: list[BaseException] = []

    def work() -> None:
        try:
            for i, case in todo:
                if failed:
                    return
                results[i] = _upload_one(store, dataset_id, case)
                counter.step()
        except BaseException as exc:
            failed.append(exc)

    threads = [threading.Thread(target=work, name=f"import-upload-{n}", daemon=True)
               for n in range(max(1, min(workers, len(cases))) - 1)]
    for thread in threads:
        thread.start()
    work()
    for thread in threads:
        thread.join()
    if failed:
        raise failed[0]
    done = [r for r in results if isinstance(r, Case)]
    return done, [r for r in results if isinstance(r, Problem)]


def _upload_one(store: ObjectStore, dataset_id: str, case: ValidCase) -> Case | Problem:
    keys = []
    try:
        for path, header in zip(case.images, case.headers, strict=True):
            keys.append(_store_image(store, dataset_id, case.case_id, path,
                                     _CONTENT_TYPES.get(header.format)))
        mask_key = None
        if case.mask_png is not None:
            digest = hashlib.sha256(case.mask_png).hexdigest()
            mask_key = f"cases/{case.case_id}/{digest[:16]}-mask.png"
            store.put_bytes(case_key(dataset_id, mask_key), case.mask_png, "image/png",
                            sha256=digest)
    except (StoreError, OSError) as exc:
        return Problem("upload_failed", f"could not store the case: {exc}", case.case_id,
                       case.source)
    return Case(case_id=case.case_id, images=keys, labels=case.labels, boxes=case.boxes,
                mask=mask_key, patient_id=case.patient_id, split=case.split,
                series=case.series)  # type: ignore[arg-type]


def _store_image(store: ObjectStore, dataset_id: str, case_id: str, path: Path,
                 content_type: str | None) -> str:
    """Store one image under its content-addressed key; the key.

    An image up to ``INLINE_MAX_BYTES`` is read once: hashed for its key and
    stored from the same bytes. A larger one is hashed, then streamed by the
    store, which hashes what it copied: a file that changed in between is an
    error, never an object whose key names other content.
    """
    with open(path, "rb") as fh:
        data = _read_inline(fh)
        if len(data) <= INLINE_MAX_BYTES:
            digest = hashlib.sha256(data).hexdigest()
            key = _image_key(case_id, digest, path)
            store.put_bytes(case_key(dataset_id, key), data, content_type, sha256=digest)
            return key
        fh.seek(0)
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    key = _image_key(case_id, digest, path)
    info = store.put_file(case_key(dataset_id, key), path, content_type)
    if info.sha256 != digest:
        raise OSError(f"{path.name} changed while it was being imported")
    return key


def _read_inline(fh: BinaryIO) -> bytes:
    """Up to ``INLINE_MAX_BYTES + 1`` bytes of ``fh``, read into a buffer of the file's
    size: ``read(INLINE_MAX_BYTES + 1)`` maps (and unmaps) 8 MiB for every image."""
    size = os.fstat(fh.fileno()).st_size
    data = fh.read(min(size, INLINE_MAX_BYTES) + 1)
    if len(data) > size:  # grew since: read on to the limit
        data += fh.read(INLINE_MAX_BYTES + 1 - len(data))
    return data


def _image_key(case_id: str, digest: str, path: Path) -> str:
    return f"cases/{case_id}/{digest[:16]}-{_safe_name(path.name)}"


def _safe_name(name: str) -> str:
    cleaned = _UNSAFE_NAME.sub("_", name).lstrip(".")[-80:]
    return cleaned or "image"


async def import_dataset(store: ObjectStore, repo: DatasetRepo, root: Path,
                         opts: ImportOptions, progress: Progress | None = None
                         ) -> ImportReport:
    """The whole import; the report lists every problem with its case, registered or not.

    The parsing, reading and uploading run in worker threads: the event loop
    (and every other consumer of the process) is never held up.
    """
    started = time.monotonic()
    dataset_id = opts.dataset_id or new_dataset_id(opts.name)
    report = _Report(dataset_id, opts, started)
    taken = await _id_taken(repo, dataset_id, opts)
    if taken is not None:
        return report.failed([taken])
    checked = await asyncio.to_thread(prepare, root, opts, progress)
    if isinstance(checked, Problem):
        return report.failed([checked])
    if checked.fatal:
        return report.failed(checked.problems, checked)
    deferred = store if isinstance(store, DeferredSync) else None  # durable below, at once
    cases, upload_problems = await asyncio.to_thread(
        upload_cases, deferred.unsynced() if deferred else store, dataset_id, checked.good,
        progress, opts.upload_workers)
    if upload_problems:
        return report.failed(checked.problems + upload_problems, checked)
    if deferred is not None:  # every image on disk before the manifest names it
        await asyncio.to_thread(deferred.sync)
    try:
        manifest = DatasetManifest(
            id=dataset_id, tenant=opts.tenant, name=opts.name,
            annotation_type=checked.annotation_type, modality=checked.modality or "other",
            classes=checked.classes, cases=cases, skipped=checked.skipped,
            series=checked.series)
    except ValidationError as exc:
        problem = Problem("invalid_manifest", f"the manifest would be invalid: {exc}")
        return report.failed([*checked.problems, problem], checked)
    sizes = [(c.headers[len(c.headers) // 2].rows, c.headers[len(c.headers) // 2].cols)
             for c in checked.good]
    if progress is not None:
        progress("registering", 0, 1)
    stats = dataset_stats(cases, checked.classes, sizes).model_copy(
        update={"body_regions": checked.body_regions, "series": len(checked.series)})
    summary = await register_dataset(store, repo, manifest, stats=stats)
    if progress is not None:
        progress("registering", 1, 1)
    return report.done(checked, summary)


async def _id_taken(repo: DatasetRepo, dataset_id: str, opts: ImportOptions) -> Problem | None:
    existing = await repo.get(dataset_id)
    if existing is None:
        return None
    if existing.tenant != opts.tenant:
        return Problem("dataset_exists", f"dataset id {dataset_id!r} is taken; choose another")
    if not opts.replace:
        return Problem("dataset_exists", f"dataset {dataset_id!r} exists; import with replace "
                       "to register a new version (tasks keep the snapshot they started with)")
    return None


class _Report:
    """Builds the ImportReport for each way an import can end."""

    def __init__(self, dataset_id: str, opts: ImportOptions, started: float) -> None:
        self.dataset_id, self.opts, self.started = dataset_id, opts, started

    def _base(self, checked: Validated | None) -> dict[str, object]:
        base: dict[str, object] = {"dataset_id": self.dataset_id, "name": self.opts.name,
                                   "format": self.opts.format,
                                   "elapsed_s": round(time.monotonic() - self.started, 3)}
        if checked is not None:
            base.update(annotation_type=checked.annotation_type, modality=checked.modality,
                        classes=checked.classes, num_cases=len(checked.good),
                        skipped=checked.skipped,
                        warnings=[w.to_schema() for w in checked.warnings])
        return base

    def failed(self, problems: list[Problem], checked: Validated | None = None) -> ImportReport:
        return ImportReport(registered=False, problems=[p.to_schema() for p in problems],
                            **self._base(checked))  # type: ignore[arg-type]

    def done(self, checked: Validated, summary: object) -> ImportReport:
        return ImportReport(registered=True, summary=summary,  # type: ignore[arg-type]
                            problems=[p.to_schema() for p in checked.problems],
                            **self._base(checked))  # type: ignore[arg-type]


def format_report(report: ImportReport, limit: int = 50) -> str:
    """Plain-text report for the CLI and logs: one line per problem."""
    out = io.StringIO()
    state = "registered" if report.registered else "NOT registered"
    out.write(f"dataset {report.dataset_id} ({report.format}): {state}, "
              f"{report.num_cases} cases, {len(report.skipped)} skipped, "
              f"{len(report.problems)} problems, {report.elapsed_s:.1f}s\n")
    for p in report.problems[:limit]:
        where = " ".join(x for x in (p.case_id and f"case {p.case_id}", p.source) if x)
        out.write(f"  [{p.code}] {where or 'dataset'}: {p.message}\n")
    if len(report.problems) > limit:
        out.write(f"  ... {len(report.problems) - limit} more\n")
    for w in report.warnings[:limit]:
        out.write(f"  warning [{w.code}] {w.case_id or 'dataset'}: {w.message}\n")
    return out.getvalue()
