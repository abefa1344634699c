"""The web console (issue 14): static ES modules and CSS served by the gateway, same origin.

- ``GET /``: a small landing page linking the console and the API description;
- ``GET /console/``: the single page (``static/index.html``); navigation inside it
  is by URL fragment (``#/tasks/<id>``), so one document serves every view;
- ``GET /console/static/<file>``: its modules, style sheet and icon, from a fixed
  list (no path from the request reaches the file system).

None of these pages holds tenant data: they are public, and everything they
show comes from the JSON API with the API key the user signs in with (kept in
``sessionStorage``, sent as a bearer header, never in a URL).
:func:`console_middleware` serves them before authentication runs.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from aiohttp import web

from gateway.openapi import OPERATIONS, Op, Param

STATIC = Path(__file__).resolve().parent / "static"
PREFIX = "/console"
TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html",
         ".svg": "image/svg+xml"}
SECURITY_HEADERS = {
    # Same origin only: no asset, script or connection to another host.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                               "style-src 'self'; script-src 'self'; connect-src 'self'; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
LANDING = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>radtrain</title><link rel="stylesheet" href="/console/static/app.css"></head>
<body class="landing"><main><h1>radtrain</h1>
<p>Train, evaluate and export imaging models from a dataset and a few choices.</p>
<ul><li><a href="/console/">Open the web console</a> (sign in with an API key)</li>
<li><a href="/docs">API operations</a> and <a href="/openapi.json">OpenAPI 3.1</a></li>
</ul></main></body></html>"""


@cache
def static_files() -> dict[str, Path]:
    """File name → path of every servable file (fixed at start-up)."""
    return {p.name: p for p in sorted(STATIC.iterdir()) if p.suffix in TYPES and p.is_file()}


def _file(name: str) -> web.Response:
    path = static_files().get(name)
    if path is None:
        return web.json_response({"error": {"code": "not_found", "message":
                                            f"no console file {name!r}", "details": []}},
                                 status=404)
    return web.Response(body=path.read_bytes(), content_type=TYPES[path.suffix],
                        charset="utf-8", headers=SECURITY_HEADERS)


async def landing(request: web.Request) -> web.Response:
    return web.Response(text=LANDING, content_type="text/html", headers=SECURITY_HEADERS)


async def index(request: web.Request) -> web.Response:
    return _file("index.html")


async def asset(request: web.Request) -> web.Response:
    return _file(request.match_info["name"])


PUBLIC = frozenset({"/", PREFIX, PREFIX + "/", PREFIX + "/static/{name}"})
"""The console's routes: public like the probes (gateway/auth.py PUBLIC_PATHS)."""


def is_console_path(path: str) -> bool:
    return path in ("/", PREFIX, PREFIX + "/") or path.startswith(PREFIX + "/static/")


@web.middleware
async def console_middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
    """Public console files skip authentication (placed before ``auth_middleware``)."""
    if request.method in ("GET", "HEAD") and is_console_path(request.path):
        route_handler = request.match_info.handler
        return await route_handler(request)
    return await handler(request)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", landing)
    app.router.add_get(PREFIX, index)  # the same page: its links are absolute
    app.router.add_get(PREFIX + "/", index)
    app.router.add_get(PREFIX + "/static/{name}", asset)


HTML = {"type": "string"}
CONSOLE_OPERATIONS = [
    Op("get", "/", "home", "Landing page: links to the web console and the API description",
       "console", {200: HTML}, public=True, ok_type="text/html"),
    Op("get", PREFIX, "consoleNoSlash", "The web console (same page as /console/)", "console",
       {200: HTML}, public=True, ok_type="text/html"),
    Op("get", PREFIX + "/", "console", "The web console: sign in with an API key", "console",
       {200: HTML}, public=True, ok_type="text/html"),
    Op("get", PREFIX + "/static/{name}", "consoleAsset",
       "A file of the web console (ES modules, style sheet, icon)", "console",
       {200: {"type": "string"}}, (404,), public=True, ok_type="text/javascript",
       params=(Param("name", "path", {"type": "string", "maxLength": 64}, True, "file name"),)),
]


def register_operations() -> None:
    """Idempotent: importing this module twice must not document a route twice."""
    known = {(op.method, op.path) for op in OPERATIONS}
    OPERATIONS.extend(op for op in CONSOLE_OPERATIONS if (op.method, op.path) not in known)


register_operations()
