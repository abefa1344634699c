"""``GET /v1/flows``: the flows table (DESIGN.md §1) that the enrich handler enforces.

Global, pure data (``handlers/catalog/flows.py``): which request fields each
flow takes, what it fixes, and which network choices and tuning modes it
allows. A client can build its form from it instead of learning the rules
from rejections.
"""

from __future__ import annotations

from aiohttp import web

from gateway.body import int_param
from gateway.openapi import AUTHED, OPERATIONS, PAGING, Op
from handlers.catalog.flows import FlowPage, flows_page

MAX_PAGE = 500

routes = web.RouteTableDef()


@routes.get("/v1/flows")
async def list_flows_route(request: web.Request) -> web.Response:
    limit = int_param(request, "limit", 50, MAX_PAGE)
    offset = int_param(request, "offset", 0, 10**9)
    return web.json_response(text=flows_page(limit, offset).model_dump_json())


FLOW_OPERATIONS = [
    Op("get", "/v1/flows", "listFlows",
       "List the flows (general, specialized, retrain): the request fields each takes, "
       "what it fixes, its network choices and tuning modes", "flows", {200: FlowPage},
       (400, *AUTHED), params=PAGING),
]


def register_operations() -> None:
    """Idempotent: importing this module twice must not document a route twice."""
    known = {(op.method, op.path) for op in OPERATIONS}
    OPERATIONS.extend(op for op in FLOW_OPERATIONS if (op.method, op.path) not in known)


register_operations()
