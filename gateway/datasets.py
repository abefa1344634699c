"""Dataset routes (DESIGN.md §6): list by annotation type, show, cases, previews, imports.

Every route is scoped to the caller's tenant: another tenant's dataset answers
404 exactly like a missing one. Reads come from KV ``datasets`` (summaries,
statistics included) and the store (manifest snapshots, cached previews).

An import is a job (DESIGN.md §2: nothing longer than a second runs in a
request): ``POST /v1/datasets/imports`` checks the body and that the source is
a folder under the caller's own ``imports/<tenant>/`` prefix (so a request can
never read another tenant's uploads), writes the queued status to KV
``dataset_imports``, publishes the job (JetStream-acked, deterministic message
id) and answers 202; the handlers process runs it
(handlers/datasets_import/job.py) and ``GET /v1/datasets/imports/{id}`` follows
it to the full report.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar, cast, get_args

import nats.errors
from aiohttp import web

from gateway.app_keys import CONNECTED, IDEMPOTENCY, JS, STORE
from gateway.auth import tenant_of
from gateway.body import int_param, read_model
from gateway.datasets_openapi import register_operations
from gateway.errors import ApiError, store_unavailable
from gateway.idempotency import (
    StoredResponse,
    body_digest,
    request_key,
    respond,
    submit_once,
    unavailable,
)
from gateway.observe import traceparent_of
from gateway.paging import cursor_param
from gateway.previews import PREVIEWER, ManifestMismatch, load_manifest, preview_key, snap_size
from gateway.ratelimit import retry_after_header
from imaging.budget import DecodeBusy
from imaging.preview import DEFAULT_SIZE, MAX_SIZE, MIN_SIZE, WINDOW_NAMES
from imaging.reader import CaseReadError
from infra.bus.topology import KV_DATASETS
from infra.dataset_imports import (
    ImportRepo,
    job_in_stream,
    new_import_id,
    source_prefix,
    submit_import,
)
from infra.kv import BucketRepo, DatasetRepo
from infra.kv.pages import Cursor
from infra.store import InvalidKey, ObjectNotFound, StoreError, validate_key
from schemas.common import is_identifier
from schemas.dataset import AnnotationType, Case, DatasetManifest, DatasetSummary
from schemas.dataset_import import (
    TASK_ANNOTATIONS,
    CasePage,
    DatasetPage,
    ImportAccepted,
    ImportJob,
    ImportPage,
    ImportReport,
    ImportRequest,
    ImportStatus,
    fits,
)
from schemas.tasks import Modality

R = TypeVar("R", bound=BucketRepo[Any])
routes = web.RouteTableDef()
log = logging.getLogger("radtrain.gateway")
register_operations()

IMPORTS_PATH = "/v1/datasets/imports"
IDEMPOTENCY_SCOPE = "dataset-import\x00"
"""Prefixed to an import's Idempotency-Key: the same key may also name a task."""
MAX_PAGE = 500
MANIFEST_CACHE = 16
PREVIEW_CONCURRENCY = 2


@dataclass
class _State:
    """Per-application lazies: the KV bucket may appear after start-up (``infra apply``)."""

    repos: dict[type[BucketRepo[Any]], BucketRepo[Any]] = field(default_factory=dict)
    manifests: OrderedDict[str, tuple[DatasetManifest, dict[str, Case]]] = field(
        default_factory=OrderedDict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    previews: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(PREVIEW_CONCURRENCY))


_STATES: weakref.WeakKeyDictionary[web.Application, _State] = weakref.WeakKeyDictionary()


def _state(app: web.Application) -> _State:
    if app not in _STATES:
        _STATES[app] = _State()
    return _STATES[app]


async def _bucket(request: web.Request, repo_type: type[R]) -> R:
    """The bucket's repository, opened on first use (it may appear after start-up)."""
    state = _state(request.app)
    if repo_type not in state.repos:
        async with state.lock:
            if repo_type not in state.repos:
                try:
                    state.repos[repo_type] = await repo_type.open(request.app[JS])
                except Exception as exc:
                    log.warning("KV %s unavailable: %r", repo_type.BUCKET.name, exc)
                    raise ApiError(503, "unavailable", f"KV '{repo_type.BUCKET.name}' "
                                   "unavailable, retry later",
                                   headers={"Retry-After": "1"}) from exc
    return cast(R, state.repos[repo_type])


async def _repo(request: web.Request) -> DatasetRepo:
    return await _bucket(request, DatasetRepo)


async def _imports(request: web.Request) -> ImportRepo:
    return await _bucket(request, ImportRepo)


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
        log.error("dataset %s: %s", summary.id, exc)
        raise ApiError(500, "manifest_corrupt", f"the manifest snapshot of dataset "
                       f"{summary.id!r} does not match its recorded sha256") from exc
    except StoreError as exc:
        raise store_unavailable(exc) from exc
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
    cursor = cursor_param(request, None, offset)
    repo, tenant = await _repo(request), tenant_of(request)
    assert repo.lists is not None  # DatasetRepo.open lists every dataset per tenant
    try:
        if (task_type, annotation, modality) == (None, None, None):  # O(limit)
            page = await repo.lists.page(tenant, limit=limit, offset=offset, cursor=cursor)
            found = await _summaries(repo, page.ids)
            body = DatasetPage(items=[s for s in found if s.tenant == tenant],
                               total=page.total, next=page.next.encode() if page.next else None)
            return web.json_response(text=body.model_dump_json())
        entries = await repo.lists.entries(tenant)  # this tenant's datasets only
        by_id = {s.id: s for s in await _summaries(repo, [i for _, i in entries])}
    except (nats.errors.Error, TimeoutError) as exc:
        raise unavailable(exc) from exc
    matched = [(p, by_id[i]) for p, i in entries if i in by_id and by_id[i].tenant == tenant
               and fits(by_id[i], task_type, annotation, modality)]
    below = [m for m in matched if cursor is None or m[0] < cursor.below]
    window = below[0 if cursor else offset:][:limit]
    more = window and len(below) > (0 if cursor else offset) + limit
    body = DatasetPage(items=[s for _, s in window], total=len(matched),
                       next=Cursor(None, window[-1][0]).encode() if more else None)
    return web.json_response(text=body.model_dump_json())


async def _summaries(repo: DatasetRepo, ids: list[str]) -> list[DatasetSummary]:
    """The summaries of ``ids`` in that order, in batched direct gets when the bucket
    allows them (else one get each); an id without a summary (yet) is left out."""
    direct = repo.lists.direct if repo.lists else None
    raw = await direct.get_last(KV_DATASETS, ids) if direct else None
    if raw is not None:
        return [DatasetSummary.model_validate_json(raw[i]) for i in ids if i in raw]
    found = await asyncio.gather(*(repo.get(i) for i in ids))
    return [s for s in found if s is not None]


# --- imports: registered before /v1/datasets/{dataset_id}, which would match them ---


@routes.post(IMPORTS_PATH)
async def submit_import_job(request: web.Request) -> web.Response:
    """Queue an import of a folder under ``imports/<tenant>/``: 202 and where to follow it."""
    req = await read_model(request, ImportRequest)
    tenant = tenant_of(request)
    _source_prefix(tenant, req.source)
    if req.labels is not None:
        _checked_relative("labels", req.labels)
    key = request_key(request)
    import_id = new_import_id(tenant, key)
    if not getattr(request.app[CONNECTED], "is_connected", False):
        raise unavailable(ConnectionError("not connected to NATS"))
    imports, js = await _imports(request), request.app[JS]
    job = ImportJob(import_id=import_id, tenant=tenant, request=req,
                    submitted_at=datetime.now(UTC), traceparent=traceparent_of(request))

    async def publish() -> None:
        try:
            await submit_import(js, imports, job)
        except (nats.errors.Error, TimeoutError) as exc:
            raise unavailable(exc) from exc

    async def published() -> bool:
        found = await imports.get(tenant, import_id)
        return (found is not None and found[0].state != "queued") or \
            await job_in_stream(js, tenant, import_id)

    answer = StoredResponse(status=202, body=ImportAccepted(import_id=import_id).model_dump(),
                            headers={"Location": f"{IMPORTS_PATH}/{import_id}"})
    if key is None:
        await publish()
        return respond(answer, replayed=False)
    return await submit_once(request.app[IDEMPOTENCY], tenant, IDEMPOTENCY_SCOPE + key,
                             import_id, body_digest(req), answer=answer, publish=publish,
                             published=published)


@routes.post("/v1/datasets/import")
async def import_moved(request: web.Request) -> web.Response:
    """The synchronous import is gone: 308 keeps the method and body on the redirect."""
    raise web.HTTPPermanentRedirect(IMPORTS_PATH)


@routes.get(IMPORTS_PATH)
async def list_imports(request: web.Request) -> web.Response:
    limit = int_param(request, "limit", 50, MAX_PAGE)
    offset = int_param(request, "offset", 0, 10**9)
    try:
        items = await (await _imports(request)).list(tenant_of(request))
    except (nats.errors.Error, TimeoutError) as exc:
        raise unavailable(exc) from exc
    page = ImportPage(items=[s.model_copy(update={"report": None})
                             for s in items[offset:offset + limit]], total=len(items))
    return web.json_response(text=page.model_dump_json())


@routes.get(IMPORTS_PATH + "/{import_id}")
async def get_import(request: web.Request) -> web.Response:
    """The status; once finished, the full report (read back from the store)."""
    import_id = request.match_info["import_id"]
    not_found = ApiError(404, "not_found", f"import {import_id!r} not found")
    if not is_identifier(import_id):
        raise not_found
    try:
        found = await (await _imports(request)).get(tenant_of(request), import_id)
    except (nats.errors.Error, TimeoutError) as exc:
        raise unavailable(exc) from exc
    if found is None:  # another tenant's import is under another key: not found either
        raise not_found
    status = found[0]
    if status.report_key is not None:
        status = status.model_copy(update={"report": await _report(request, status)})
    return web.json_response(text=status.model_dump_json())


async def _report(request: web.Request, status: ImportStatus) -> ImportReport:
    assert status.report_key is not None
    try:
        data = await asyncio.to_thread(request.app[STORE].get_bytes, status.report_key)
    except ObjectNotFound:
        raise ApiError(500, "report_missing", f"import {status.import_id}: its report "
                       f"{status.report_key} is gone from the store") from None
    except StoreError as exc:
        raise store_unavailable(exc) from exc
    return ImportReport.model_validate_json(data)


def _checked_relative(name: str, value: str) -> str:
    try:
        return validate_key(value.rstrip("/"))
    except InvalidKey as exc:
        raise ApiError(422, "validation_error", f"{name}: {exc}") from exc


def _source_prefix(tenant: str, source: str) -> str:
    try:
        return source_prefix(tenant, source)
    except InvalidKey as exc:
        raise ApiError(422, "validation_error", f"source: {exc}") from exc


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
    size = snap_size(size)  # issue 17: a fixed list of sizes, so a bounded cache
    manifest, by_id = await _manifest(request, await _summary(request))
    case_id = request.match_info["case_id"]
    case = by_id.get(case_id)
    if case is None:
        raise ApiError(404, "not_found", f"case {case_id!r} not found in {manifest.id!r}")
    key = preview_key(manifest.id, case, manifest.classes, window, size)
    etag = '"' + key.rsplit("/", 1)[-1].removesuffix(".png") + '"'
    headers = {"ETag": etag, "Cache-Control": "private, max-age=86400",
               "X-Preview-Size": str(size)}
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    async with _state(request.app).previews:
        try:
            png, hit = await request.app[PREVIEWER].render(request.app[STORE], manifest, case,
                                                           window=window, size=size)
        except CaseReadError as exc:
            raise ApiError(422, "case_unreadable", exc.message) from exc
        except DecodeBusy as exc:
            raise ApiError(503, "decoding_busy", "image decoding is at capacity; retry later",
                           headers={"Retry-After": retry_after_header(exc.wait_s)}) from exc
        except StoreError as exc:
            raise store_unavailable(exc) from exc
    headers["X-Preview-Cache"] = "hit" if hit else "miss"
    return web.Response(body=png, content_type="image/png", headers=headers)


