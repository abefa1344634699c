"""Gateway observability: trace context, request metrics, access log, ``/metrics``.

The outermost middleware: it sees the final status of every answer (errors
included, since the error middleware sits inside it). The incoming
``traceparent`` is kept when valid, otherwise a new trace starts; the
gateway's own hop is a child span, which is what goes on ``task.requested``
and back in the response header.
"""

from __future__ import annotations

import logging
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.app_keys import TRACEPARENT
from infra.telemetry.logging import traceparent_var
from infra.telemetry.metrics import HTTP_LATENCY, HTTP_REQUESTS, labelled
from infra.telemetry.tracing import new_traceparent, parse_traceparent

log = logging.getLogger("radtrain.gateway.access")

routes = web.RouteTableDef()


def _route_label(request: web.Request) -> str:
    """The route template (``/v1/tasks/{task_id}``), never the raw path: bounded labels."""
    info = request.match_info
    resource = info.route.resource if info.http_exception is None else None
    return resource.canonical if resource is not None else "unmatched"


def traceparent_of(request: web.Request) -> str:
    """The gateway span's traceparent, to put on the events this request publishes."""
    return request.get(TRACEPARENT) or str(new_traceparent())


@web.middleware
async def observe_middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
    incoming = parse_traceparent(request.headers.get("traceparent"))
    span = str(incoming.child() if incoming else new_traceparent())
    request[TRACEPARENT] = span
    started = time.perf_counter()
    status = 500
    token = traceparent_var.set(span)  # tags this request's log lines (and its events)
    try:
        response = await handler(request)
        status = response.status
        response.headers["traceparent"] = span
        return response
    except web.HTTPException as exc:  # redirects and the like, re-raised by errors
        status = exc.status
        raise
    finally:
        elapsed = time.perf_counter() - started
        route = _route_label(request)
        labelled(HTTP_REQUESTS, request.method, route, str(status)).inc()
        labelled(HTTP_LATENCY, request.method, route).observe(elapsed)
        if log.isEnabledFor(logging.INFO):
            log.info("%s %s %d %.1fms", request.method, request.path, status, elapsed * 1000,
                     extra={"http_status": status, "route": route})
        traceparent_var.reset(token)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format of this process's registry."""
    body = generate_latest()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
