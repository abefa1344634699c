"""``PUT /v1/uploads/{source}/{path}``: one file of a dataset into the tenant's import area.

The web console (and any client without store credentials) uploads a folder
file by file here, then queues ``POST /v1/datasets/imports`` with the same
``source``. Each file lands at ``imports/<tenant>/<source>/<path>``
(:func:`infra.dataset_imports.source_prefix`, so a request can never write
outside its own tenant's area) and is streamed: the body is copied in chunks
to a temporary file and from there to the store, so the gateway never holds a
file, let alone a dataset, in memory. A body larger than the setting
``upload_max_bytes`` is refused with a 413 (before reading, when
``Content-Length`` says so) and nothing is kept.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import IO

from aiohttp import web

from gateway.app_keys import SETTINGS, STORE
from gateway.auth import tenant_of
from gateway.errors import ApiError
from gateway.openapi import AUTHED, OPERATIONS, Op, Param
from infra.dataset_imports import source_prefix
from infra.store import InvalidKey, StoreError, validate_key
from schemas.api import ErrorItem
from schemas.common import is_identifier

routes = web.RouteTableDef()
CHUNK = 1 << 20


def _target(tenant: str, source: str, path: str) -> str:
    if not is_identifier(source):
        raise ApiError(422, "validation_error", "invalid upload: source", [ErrorItem(
            field="source", message="letters, digits, '-', '_' and '.' only")])
    try:
        return f"{source_prefix(tenant, source)}/{validate_key(path)}"
    except InvalidKey as exc:
        raise ApiError(422, "validation_error", "invalid upload: path",
                       [ErrorItem(field="path", message=str(exc))]) from exc


def _too_large(cap: int) -> ApiError:
    return ApiError(413, "payload_too_large",
                    f"an uploaded file may have at most {cap} bytes (setting upload_max_bytes)")


@routes.put("/v1/uploads/{source}/{path:.+}")
async def upload_file(request: web.Request) -> web.Response:
    key = _target(tenant_of(request), request.match_info["source"], request.match_info["path"])
    cap = request.app[SETTINGS].upload_max_bytes
    if request.content_length is not None and request.content_length > cap:
        raise _too_large(cap)
    with tempfile.TemporaryDirectory(prefix="radtrain-upload-") as tmp:
        local = Path(tmp) / "body"
        with local.open("wb") as fh:
            size = await _spool(request, fh, cap)
        try:
            info = await asyncio.to_thread(request.app[STORE].put_file, key, local,
                                           "application/octet-stream")
        except StoreError as exc:
            raise ApiError(503, "unavailable", f"object store unavailable: {exc}",
                           headers={"Retry-After": "1"}) from exc
    path = key.split("/", 3)[3]
    return web.json_response({"source": request.match_info["source"], "path": path,
                              "size": size, "sha256": info.sha256}, status=201)


async def _spool(request: web.Request, fh: IO[bytes], cap: int) -> int:
    """Copy the body chunk by chunk; a 413 as soon as it passes ``cap``."""
    size = 0
    async for chunk in request.content.iter_chunked(CHUNK):
        size += len(chunk)
        if size > cap:
            raise _too_large(cap)
        await asyncio.to_thread(fh.write, chunk)
    return size


UPLOAD_OPERATIONS = [
    Op("put", "/v1/uploads/{source}/{path}", "uploadFile",
       "Stream one file to imports/<tenant>/<source>/<path> in the store, for "
       "POST /v1/datasets/imports with that source", "datasets",
       {201: {"type": "object", "properties": {
           "source": {"type": "string"}, "path": {"type": "string"},
           "size": {"type": "integer"}, "sha256": {"type": "string"}}}},
       (*AUTHED, 404, 413, 422, 503), params=(
           Param("source", "path", {"type": "string", "minLength": 1, "maxLength": 128}, True,
                 "the import source (a folder name under the tenant's import area)"),
           Param("path", "path", {"type": "string", "minLength": 1}, True,
                 "the file's path inside the source, e.g. images/a.png or labels.csv"))),
]


def register_operations() -> None:
    """Idempotent: importing this module twice must not document a route twice."""
    known = {(op.method, op.path) for op in OPERATIONS}
    OPERATIONS.extend(op for op in UPLOAD_OPERATIONS if (op.method, op.path) not in known)


register_operations()
