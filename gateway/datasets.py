"""Dataset routes (DESIGN.md §6): list by annotation type, show, cases, previews, import.

Every route is scoped to the caller's tenant: another tenant's dataset answers
404 exactly like a missing one. Reads come from KV ``datasets`` (summaries,
statistics included) and the store (manifest snapshots, cached previews).
An import names a folder under the caller's own ``imports/<tenant>/`` prefix,
so a request can never read another tenant's uploads; it is validated in a
worker thread and answered with the full report.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import weakref
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

from aiohttp import web

from gateway.app_keys import JS, STORE
from gateway.auth import tenant_of
from gateway.body import int_param, read_model
from gateway.datasets_openapi import register_operations
from gateway.errors import ApiError
from gateway.previews import ManifestMismatch, case_preview, load_manifest, preview_key
from handlers.datasets_import.base import ImportOptions
from handlers.datasets_import.pipeline import import_dataset
from imaging.preview import DEFAULT_SIZE, MAX_SIZE, MIN_SIZE, WINDOW_NAMES
from imaging.reader import CaseReadError
from infra.kv import DatasetRepo
from infra.store import InvalidKey, ObjectNotFound, ObjectStore, StoreError, validate_key
from schemas.common import is_identifier
from schemas.dataset import AnnotationType, Case, DatasetManifest, DatasetSummary
from schemas.dataset_import import (
    TASK_ANNOTATIONS,
    CasePage,
    DatasetPage,
    ImportReport,
    ImportRequest,
    fits,
)
from schemas.tasks import Modality

routes = web.RouteTableDef()
register_operations()

IMPORTS_PREFIX = "imports"
MAX_PAGE = 500
MAX_IMPORT_OBJECTS = 200_000
MANIFEST_CACHE = 16
PREVIEW_CONCURRENCY = 2


@dataclass
class _State:
    """Per-application lazies: the KV bucket may appear after start-up (``infra apply``)."""

    repo: DatasetRepo | None = None
    manifests: OrderedDict[str, tuple[DatasetManifest, dict[str, Case]]] = field(
        default_factory=OrderedDict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    previews: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(PREVIEW_CONCURRENCY))
    imports: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(1))


_STATES: weakref.WeakKeyDictionary[web.Application, _State] = weakref.WeakKeyDictionary()


def _state(app: web.Application) -> _State:
    if app not in _STATES:
        _STATES[app] = _State()
    return _STATES[app]


async def _repo(request: web.Request) -> DatasetRepo:
    state = _state(request.app)
    if state.repo is None:
        async with state.lock:
            if state.repo is None:
                try:
                    state.repo = await DatasetRepo.open(request.app[JS])
                except Exception as exc:
                    raise ApiError(503, "unavailable", f"KV 'datasets' unavailable: {exc!r}"
                                   ) from exc
    return state.repo


async def _summary(request: web.Request) -> DatasetSummary:
    dataset_id = request.match_info["dataset_id"]
    not_found = ApiError(404, "not_found", f"dataset {dataset_id!r} not found")
    if not is_identifier(dataset_id):
        raise not_found
    summary = await (await _repo(request)).get(dataset_id)
    if summary is None or summary.tenant != tenant_of(request):
        raise not_found
    return summary


async def _manifest(request: web.Request, summary: DatasetSummary
                    ) -> tuple[DatasetManifest, dict[str, Case]]:
    """The pinned snapshot, parsed once per gateway: snapshots never change."""
    cache = _state(request.app).manifests
    if summary.manifest_key in cache:
        cache.move_to_end(summary.manifest_key)
        return cache[summary.manifest_key]
    try:
        manifest = await asyncio.to_thread(load_manifest, request.app[STORE], summary)
    except ObjectNotFound:
        raise ApiError(404, "not_found", f"dataset {summary.id!r} has no manifest") from None
    except ManifestMismatch as exc:
        raise ApiError(500, "manifest_corrupt", str(exc)) from exc
    except StoreError as exc:
        raise ApiError(503, "unavailable", f"object store unavailable: {exc}") from exc
    entry = (manifest, {c.case_id: c for c in manifest.cases})
    cache[summary.manifest_key] = entry
    while len(cache) > MANIFEST_CACHE:
        cache.popitem(last=False)
    return entry


def _choice(request: web.Request, name: str, allowed: tuple[str, ...]) -> str | None:
    value = request.query.get(name)
    if value is not None and value not in allowed:
        raise ApiError(400, "invalid_query", f"{name} must be one of {', '.join(allowed)}; "
                       f"got {value!r}")
    return value


@routes.get("/v1/datasets")
async def list_datasets(request: web.Request) -> web.Response:
    limit = int_param(request, "limit", 50, MAX_PAGE)
    offset = int_param(request, "offset", 0, 10**9)
    task_type = _choice(request, "task_type", tuple(TASK_ANNOTATIONS))
    annotation = _choice(request, "annotation_type", get_args(AnnotationType))
    modality = _choice(request, "modality", get_args(Modality))
    items = [s for s in await (await _repo(request)).list(tenant_of(request))
             if fits(s, task_type, annotation, modality)]
    items.sort(key=lambda s: (s.created_at.timestamp() if s.created_at else 0.0, s.name),
               reverse=True)
    page = DatasetPage(items=items[offset:offset + limit], total=len(items))
    return web.json_response(text=page.model_dump_json())


@routes.get("/v1/datasets/{dataset_id}")
async def get_dataset(request: web.Request) -> web.Response:
    return web.json_response(text=(await _summary(request)).model_dump_json())


@routes.get("/v1/datasets/{dataset_id}/cases")
async def list_cases(request: web.Request) -> web.Response:
    limit = int_param(request, "limit", 50, MAX_PAGE)
    offset = int_param(request, "offset", 0, 10**9)
    split = _choice(request, "split", ("train", "val", "test"))
    label = request.query.get("label")
    manifest, _ = await _manifest(request, await _summary(request))
    cases = [c for c in manifest.cases
             if (split is None or c.split == split)
             and (label is None or label in c.labels or any(b.label == label for b in c.boxes))]
    page = CasePage(items=cases[offset:offset + limit], total=len(cases))
    return web.json_response(text=page.model_dump_json())


@routes.get("/v1/datasets/{dataset_id}/cases/{case_id}/preview.png")
async def preview(request: web.Request) -> web.Response:
    window = _choice(request, "window", WINDOW_NAMES) or "auto"
    size = int_param(request, "size", DEFAULT_SIZE, MAX_SIZE)
    if size < MIN_SIZE:
        raise ApiError(400, "invalid_query", f"size must be between {MIN_SIZE} and {MAX_SIZE}")
    manifest, by_id = await _manifest(request, await _summary(request))
    case_id = request.match_info["case_id"]
    case = by_id.get(case_id)
    if case is None:
        raise ApiError(404, "not_found", f"case {case_id!r} not found in {manifest.id!r}")
    key = preview_key(manifest.id, case, manifest.classes, window, size)
    etag = '"' + key.rsplit("/", 1)[-1].removesuffix(".png") + '"'
    headers = {"ETag": etag, "Cache-Control": "private, max-age=86400"}
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    async with _state(request.app).previews:
        try:
            png, hit = await asyncio.to_thread(case_preview, request.app[STORE], manifest, case,
                                               window=window, size=size)
        except CaseReadError as exc:
            raise ApiError(422, "case_unreadable", exc.message) from exc
        except StoreError as exc:
            raise ApiError(503, "unavailable", f"object store unavailable: {exc}") from exc
    headers["X-Preview-Cache"] = "hit" if hit else "miss"
    return web.Response(body=png, content_type="image/png", headers=headers)


@routes.post("/v1/datasets/import")
async def import_from_store(request: web.Request) -> web.Response:
    req = await read_model(request, ImportRequest)
    tenant = tenant_of(request)
    prefix = _source_prefix(tenant, req.source)
    if req.labels is not None:
        _checked_relative("labels", req.labels)
    opts = ImportOptions(
        name=req.name, format=req.format, tenant=tenant, dataset_id=req.dataset_id,
        annotation_type=req.annotation_type, classes=req.classes, modality=req.modality,
        labels=req.labels, skip_bad=req.skip_bad, replace=req.replace, rle=req.rle,
        decode=req.decode)
    store, repo = request.app[STORE], await _repo(request)
    async with _state(request.app).imports:
        tmp = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="radtrain-import-"))
        try:
            count = await asyncio.to_thread(download_prefix, store, prefix, tmp)
            if count == 0:
                raise ApiError(404, "not_found", f"nothing under {req.source!r} in "
                               f"{IMPORTS_PREFIX}/{tenant}/")
            report = await import_dataset(store, repo, tmp, opts)
        finally:
            await asyncio.to_thread(shutil.rmtree, tmp, True)
    return _report_response(report)


def _checked_relative(name: str, value: str) -> str:
    try:
        return validate_key(value.rstrip("/"))
    except InvalidKey as exc:
        raise ApiError(422, "validation_error", f"{name}: {exc}") from exc


def _source_prefix(tenant: str, source: str) -> str:
    """``imports/<tenant>/<source>``: relative, no ``..``, so never another tenant's area."""
    return f"{IMPORTS_PREFIX}/{tenant}/{_checked_relative('source', source)}"


def download_prefix(store: ObjectStore, prefix: str, dest: Path) -> int:
    """Copy every object under ``prefix/`` into ``dest``, keeping the relative layout."""
    keys = store.list(prefix + "/")
    if len(keys) > MAX_IMPORT_OBJECTS:
        raise ApiError(413, "too_many_objects",
                       f"{len(keys)} objects in the source; at most {MAX_IMPORT_OBJECTS}")

    def fetch(key: str) -> None:
        target = dest.joinpath(*key[len(prefix) + 1:].split("/"))
        store.get_file(key, target)

    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(fetch, keys))
    except StoreError as exc:
        raise ApiError(503, "unavailable", f"reading the source: {exc}") from exc
    return len(keys)


def _report_response(report: ImportReport) -> web.Response:
    body = report.model_dump(mode="json")
    if report.registered:
        return web.json_response(body, status=201,
                                 headers={"Location": f"/v1/datasets/{report.dataset_id}"})
    exists = any(p.code == "dataset_exists" for p in report.problems)
    details = [{"field": p.case_id or p.source or "dataset", "message": f"[{p.code}] {p.message}"}
               for p in report.problems[:1000]]
    error = {"code": "dataset_exists" if exists else "dataset_invalid",
             "message": f"dataset {report.dataset_id!r} was not registered: "
                        f"{len(report.problems)} problems", "details": details}
    return web.json_response({"error": error, "report": body}, status=409 if exists else 422)
