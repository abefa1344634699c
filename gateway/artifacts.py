"""``GET /v1/tasks/{task_id}/artifacts/{name}``: a finished task's files, tenant-scoped.

The store key comes from the task record (the ``task.completed`` of the attempt
that committed the run, under its own ``runs/<task_id>/attempts/<n>/`` prefix),
never from the URL: a caller names an artifact, and only one that its own task
produced can be read. The bytes are checked against the recorded sha256 before
any is sent: a store that holds other bytes under that key answers 503, never a
file that is not the one the task recorded.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import tempfile
from pathlib import Path

from aiohttp import web

from gateway.app_keys import STORE, TASKS
from gateway.auth import tenant_of
from gateway.errors import ApiError, store_unavailable
from infra.store import ObjectNotFound, StoreUnavailable
from schemas.common import is_identifier
from schemas.record import TaskRecord

log = logging.getLogger("radtrain.gateway")
routes = web.RouteTableDef()
CHUNK = 1 << 20


@routes.get("/v1/tasks/{task_id}/artifacts/{name}")
async def get_artifact(request: web.Request) -> web.StreamResponse:
    task_id, name = request.match_info["task_id"], request.match_info["name"]
    not_found = ApiError(404, "not_found", f"artifact {name!r} of task {task_id!r} not found")
    if not is_identifier(task_id):
        raise not_found
    found = await request.app[TASKS].get(task_id)
    if found is None or found[0].tenant != tenant_of(request):
        raise not_found
    artifact = next((a for a in found[0].artifacts if a.name == name), None)
    if artifact is None:
        raise not_found
    with tempfile.TemporaryDirectory(prefix="radtrain-artifact-") as tmp:
        path = Path(tmp) / "blob"
        try:
            await asyncio.to_thread(request.app[STORE].get_file, artifact.key, path)
        except ObjectNotFound:
            raise not_found from None
        except StoreUnavailable as exc:
            raise store_unavailable(exc) from exc
        stored = await asyncio.to_thread(_sha256, path)
        if stored != artifact.sha256:
            log.error("task %s: %s at %s has sha256 %s, the task recorded %s", task_id, name,
                      artifact.key, stored, artifact.sha256)
            raise ApiError(503, "artifact_mismatch", f"the stored bytes of {name!r} do not "
                           "match the recorded sha256; retry later or ask an operator")
        return await _stream(request, path, name, artifact.sha256)


def public_record(record: TaskRecord) -> TaskRecord:
    """The record as clients see it: an artifact's ``uri`` that is a path on the server
    (the local store's file://) becomes the gateway's download route (issue 17)."""
    if not any(a.uri.startswith("file:") for a in record.artifacts):
        return record
    artifacts = [a if not a.uri.startswith("file:") else a.model_copy(update={
        "uri": f"/v1/tasks/{record.task_id}/artifacts/{a.name}"}) for a in record.artifacts]
    return record.model_copy(update={"artifacts": artifacts})


def public_event(data: bytes) -> bytes:
    """A ``task.completed`` envelope as clients see it: artifact URIs that are paths on the
    server (file://) become the gateway's download routes; anything else is unchanged."""
    if b"file:" not in data:
        return data
    try:
        envelope = json.loads(data)
        task_id = envelope["data"]["task_id"]
        for art in envelope["data"]["artifacts"]:
            if str(art.get("uri", "")).startswith("file:"):
                art["uri"] = f"/v1/tasks/{task_id}/artifacts/{art['name']}"
    except (ValueError, KeyError, TypeError, AttributeError):
        return data
    return json.dumps(envelope, separators=(",", ":")).encode()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


async def _stream(request: web.Request, path: Path, name: str, sha256: str
                  ) -> web.StreamResponse:
    """Chunked from a temporary file: large weights never sit whole in memory."""
    resp = web.StreamResponse(headers={
        "Content-Type": "application/octet-stream",
        "Content-Disposition": f'attachment; filename="{name}"',
        "ETag": f'"{sha256}"',
    })
    resp.content_length = (await asyncio.to_thread(path.stat)).st_size
    await resp.prepare(request)
    with path.open("rb") as fh:
        while chunk := await asyncio.to_thread(fh.read, CHUNK):
            await resp.write(chunk)
    await resp.write_eof()
    return resp
