"""Preset routes (DESIGN.md §1): list and show. Global: presets have no tenant.

Pure reads of the catalog data in handlers/catalog/presets.json, like the zoo.
"""

from __future__ import annotations

from aiohttp import web

from gateway.body import int_param
from gateway.errors import ApiError
from gateway.openapi import AUTHED, OPERATIONS, PAGING, Op, Param
from handlers.catalog.presets import Preset, PresetPage, UnknownPreset, get_preset, list_presets

MAX_PAGE = 500

routes = web.RouteTableDef()


@routes.get("/v1/presets")
async def list_presets_route(request: web.Request) -> web.Response:
    limit = int_param(request, "limit", 50, MAX_PAGE)
    offset = int_param(request, "offset", 0, 10**9)
    found = list(list_presets())
    page = PresetPage(items=found[offset:offset + limit], total=len(found))
    return web.json_response(text=page.model_dump_json())


@routes.get("/v1/presets/{preset}")
async def show_preset(request: web.Request) -> web.Response:
    try:
        preset = get_preset(request.match_info["preset"])
    except UnknownPreset as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    return web.json_response(text=preset.model_dump_json())


PRESET_OPERATIONS = [
    Op("get", "/v1/presets", "listPresets",
       "List the specialized-flow presets (task, classes, preprocessing, network, recipe)",
       "presets", {200: PresetPage}, (400, *AUTHED, 422), params=PAGING),
    Op("get", "/v1/presets/{preset}", "getPreset", "One preset", "presets", {200: Preset},
       (*AUTHED, 404), params=(
           Param("preset", "path", {"type": "string", "maxLength": 128}, True, "preset id"),)),
]


def register_operations() -> None:
    """Idempotent: importing this module twice must not document a route twice."""
    known = {(op.method, op.path) for op in OPERATIONS}
    OPERATIONS.extend(op for op in PRESET_OPERATIONS if (op.method, op.path) not in known)


register_operations()
