"""A search's trials over HTTP (issue 18): read from KV ``searches`` and ``tasks``.

* ``GET /v1/tasks/{id}/search``: the search as ``radtrain watch`` shows it (status,
  objective, best trial, every trial with its values, state and value);
* ``GET /v1/tasks?parent={id}``: its trials' task records, in trial order (the list
  route of gateway/tasks.py hands the ``parent`` query to :func:`children_page`).

Both answer 404 for a task of another tenant, as every task route does. Cancelling
the parent (``POST /v1/tasks/{id}/cancel``) cancels its running trials: the search
handler does it when it sees the parent's ``task.cancel_requested``.
"""

from __future__ import annotations

import nats.errors
from aiohttp import web
from nats.js.errors import BucketNotFoundError, KeyNotFoundError

from gateway.app_keys import JS
from gateway.artifacts import public_record
from gateway.auth import tenant_of
from gateway.errors import ApiError
from gateway.idempotency import unavailable
from gateway.task_records import records_of, task_record_for
from infra.bus.names import KV_SEARCHES
from schemas.api import TaskPage
from schemas.search_state import SearchState, search_view

routes = web.RouteTableDef()


async def search_state(request: web.Request, task_id: str) -> SearchState | None:
    try:
        kv = await request.app[JS].key_value(KV_SEARCHES)
        entry = await kv.get(task_id)
    except (KeyNotFoundError, BucketNotFoundError):
        return None
    except (nats.errors.Error, TimeoutError) as exc:
        raise unavailable(exc) from exc
    return SearchState.model_validate_json(entry.value or b"{}")


@routes.get("/v1/tasks/{task_id}/search")
async def get_search(request: web.Request) -> web.Response:
    record = await task_record_for(request)
    state = await search_state(request, record.task_id)
    if state is None or state.tenant != record.tenant:
        raise ApiError(404, "not_found", f"task {record.task_id!r} is not a search (or its "
                                         "first trials are not asked yet)")
    return web.json_response(text=search_view(state).model_dump_json())


async def children_page(request: web.Request, parent: str, limit: int,
                        offset: int) -> web.Response:
    """The trials of ``parent`` (none for a task that is not a search)."""
    state = await search_state(request, parent)
    if state is None or state.tenant != tenant_of(request):
        ids: list[str] = []
    else:
        ids = [t.task_id for t in state.trials]
    try:
        found = await records_of(request, ids[offset:offset + limit])
    except (nats.errors.Error, TimeoutError) as exc:
        raise unavailable(exc) from exc
    items = [public_record(r) for r in found if r.tenant == tenant_of(request)]
    body = TaskPage(items=items, total=len(ids), next=None)
    return web.json_response(text=body.model_dump_json())
