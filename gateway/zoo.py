"""Model zoo routes (DESIGN.md §7): list, show, suggest. Global: the zoo has no tenant.

Reads the catalog (pure data from handlers/catalog) and its ranking function;
no torch, no store. Unknown filters and bad bodies are 422s naming the field.
"""

from __future__ import annotations

from typing import get_args

from aiohttp import web

from gateway.body import int_param, read_model
from gateway.errors import ApiError
from gateway.openapi import AUTHED, OPERATIONS, PAGING, Op, Param
from handlers.catalog.select import rank
from handlers.catalog.zoo import UnknownZooEntry, families, get_entry, list_entries
from schemas.api import ErrorItem
from schemas.tasks import TaskType
from schemas.zoo import (
    Cost,
    Suggestion,
    SuggestRequest,
    SuggestResponse,
    ZooEntry,
    ZooPage,
)

MAX_PAGE = 500

routes = web.RouteTableDef()


def _choice(request: web.Request, name: str, allowed: list[str]) -> str | None:
    value = request.query.get(name)
    if value is None or value == "":
        return None
    if value not in allowed:
        raise ApiError(422, "validation_error", f"invalid query: {name}", [ErrorItem(
            field=name, message=f"{value!r} is not one of {', '.join(allowed)}")])
    return value


@routes.get("/v1/zoo")
async def list_zoo(request: web.Request) -> web.Response:
    limit = int_param(request, "limit", 50, MAX_PAGE)
    offset = int_param(request, "offset", 0, 10**9)
    task_type = _choice(request, "task_type", list(get_args(TaskType)))
    family = _choice(request, "family", families())
    q = request.query.get("q")
    if q is not None and len(q) > 200:
        raise ApiError(422, "validation_error", "invalid query: q",
                       [ErrorItem(field="q", message="at most 200 characters")])
    found = list_entries(task_type, family, q)
    page = ZooPage(items=found[offset:offset + limit], total=len(found))
    return web.json_response(text=page.model_dump_json())


@routes.get("/v1/zoo/{entry}")
async def show_zoo_entry(request: web.Request) -> web.Response:
    entry_id = request.match_info["entry"]
    try:
        entry = get_entry(entry_id)
    except UnknownZooEntry as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    return web.json_response(text=entry.model_dump_json())


@routes.post("/v1/zoo/suggest")
async def suggest(request: web.Request) -> web.Response:
    req = await read_model(request, SuggestRequest)
    ranked = rank(req.task_type, req.data_type, req.preference, limit=req.limit)
    body = SuggestResponse(items=[
        Suggestion(entry=r.entry.id, score=r.score, reason=r.reason,
                   cost=Cost(params_m=r.cost.params_m, gmacs=r.cost.gmacs,
                             train_size=r.cost.train_size,
                             relative_speed=r.cost.relative_speed))
        for r in ranked])
    return web.json_response(text=body.model_dump_json())


ZOO_OPERATIONS = [
    Op("get", "/v1/zoo", "listZoo", "List zoo entries (network × pretrained weights)", "zoo",
       {200: ZooPage}, (400, *AUTHED, 422), params=(
           *PAGING,
           Param("task_type", "query", {"type": "string", "enum": list(get_args(TaskType))}),
           Param("family", "query", {"type": "string"}, False, "architecture family"),
           Param("q", "query", {"type": "string", "maxLength": 200}, False,
                 "substring of id, network, family or pretraining data"))),
    Op("get", "/v1/zoo/{entry}", "getZooEntry", "A zoo entry (an id or a bare network name)",
       "zoo", {200: ZooEntry}, (*AUTHED, 404), params=(
           Param("entry", "path", {"type": "string", "maxLength": 128}, True, "entry id"),)),
    Op("post", "/v1/zoo/suggest", "suggestZoo",
       "Rank entries for a data type and preference, each with its reason and cost", "zoo",
       {200: SuggestResponse}, (400, *AUTHED, 413, 415, 422), body=SuggestRequest),
]


def register_operations() -> None:
    """Idempotent: importing this module twice must not document a route twice."""
    known = {(op.method, op.path) for op in OPERATIONS}
    OPERATIONS.extend(op for op in ZOO_OPERATIONS if (op.method, op.path) not in known)


register_operations()
