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
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.app_keys import TRACEPARENT
from infra.telemetry.logging import traceparent_var
from infra.telemetry.metrics import HTTP_LATENCY, HTTP_REQUESTS
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


class _Instruments:
    """The labelled children of the request metrics, looked up once per label set:
    ``labels()`` takes a lock and builds a key on every call. Bounded: routes are
    templates, methods and statuses few (``MAX`` label sets, then no caching)."""

    MAX = 4096

    def __init__(self) -> None:
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, method: str, route: str, status: int, elapsed: float) -> None:
        found = self._children.get((method, route, status))
        if found is None:
            found = (HTTP_REQUESTS.labels(method, route, str(status)),
                     HTTP_LATENCY.labels(method, route))
            if len(self._children) < self.MAX:
                self._children[(method, route, status)] = found
        found[0].inc()
        found[1].observe(elapsed)


_INSTRUMENTS = _Instruments()


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
        _INSTRUMENTS.observe(request.method, route, status, elapsed)
        if log.isEnabledFor(logging.INFO):
            log.info("%s %s %d %.1fms", request.method, request.path, status, elapsed * 1000,
                     extra={"http_status": status, "route": route})
        traceparent_var.reset(token)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format of this process's registry."""
    body = generate_latest()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
