"""The console's routes and the streaming upload route (aiohttp test server, no NATS).

Console files are public (served before authentication) with a same-origin CSP;
uploads land under the caller's own ``imports/<tenant>/<source>/`` and a body past
``upload_max_bytes`` is a 413 that keeps nothing, whether its length is announced or
it arrives chunked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway import uploads
from gateway.app_keys import SETTINGS, STORE, TENANT
from gateway.auth import Unauthorized
from gateway.console import add_routes, console_middleware, static_files
from gateway.errors import error_middleware
from infra.settings import Settings
from infra.store import open_store

CAP = 64 * 1024


@web.middleware
async def fake_auth(request: web.Request, handler):  # type: ignore[no-untyped-def]
    if request.headers.get("Authorization") != "Bearer good":
        raise Unauthorized("invalid or revoked API key")
    request[TENANT] = "acme"
    return await handler(request)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient]:
    settings = Settings(store_dir=tmp_path / "store", upload_max_bytes=CAP)
    app = web.Application(middlewares=[error_middleware, console_middleware, fake_auth])
    app[SETTINGS], app[STORE] = settings, open_store(settings)
    app.add_routes(uploads.routes)
    add_routes(app)
    async with TestClient(TestServer(app)) as c:
        yield c


async def test_console_files_are_public_and_same_origin(client: TestClient) -> None:
    for path in ("/", "/console", "/console/"):
        resp = await client.get(path)
        assert resp.status == 200 and resp.content_type == "text/html", path
        assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
    assert "/console/" in await (await client.get("/")).text()
    page = await (await client.get("/console/")).text()
    assert 'src="/console/static/app.js"' in page and "http" not in page.replace(
        "http-equiv", "")  # no asset from another host
    assert {"app.js", "api.js", "wizard.js", "app.css", "index.html"} <= set(static_files())
    resp = await client.get("/console/static/app.js")
    assert resp.status == 200 and resp.content_type == "text/javascript"
    for name in ("nope.js", "..%2Fapp.py", "__init__.py"):
        resp = await client.get(f"/console/static/{name}")
        assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"
    assert (await client.get("/v1/uploads/s/a.png")).status == 401  # only the console is public


def js_sources() -> str:
    return "\n".join(p.read_text() for n, p in static_files().items() if n.endswith(".js"))


def test_the_key_stays_in_session_storage_and_headers() -> None:
    src = js_sources()
    assert "sessionStorage" in src and "localStorage" not in src
    assert "console.log" not in src and "api_key=" not in src and "new EventSource" not in src
    src = src.replace("http://www.w3.org/2000/svg", "")  # an XML namespace, not a request
    assert "https://" not in src and "http://" not in src


async def test_upload_streams_into_the_tenant_area(client: TestClient, tmp_path: Path) -> None:
    body = b"x" * (CAP - 1)
    resp = await client.put("/v1/uploads/web-1/images/a%20b.dcm", data=body,
                            headers={"Authorization": "Bearer good"})
    assert resp.status == 201, await resp.text()
    out = await resp.json()
    assert out["path"] == "images/a b.dcm" and out["size"] == len(body)
    store = open_store(Settings(store_dir=tmp_path / "store"))
    assert store.get_bytes("imports/acme/web-1/images/a b.dcm") == body


async def chunks(n: int, size: int = 8192) -> AsyncIterator[bytes]:
    for _ in range(n):
        yield b"y" * size


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_body_past_the_cap_is_refused_and_nothing_kept(
        client: TestClient, tmp_path: Path, chunked: bool) -> None:
    data = chunks(CAP // 8192 + 2) if chunked else b"z" * (CAP + 1)
    resp = await client.put("/v1/uploads/web-2/big.bin", data=data,
                            headers={"Authorization": "Bearer good"})
    assert resp.status == 413
    assert "upload_max_bytes" in (await resp.json())["error"]["message"]
    store = open_store(Settings(store_dir=tmp_path / "store"))
    assert store.list("imports/acme/web-2/") == []


@pytest.mark.parametrize(("path", "field"), [
    ("/v1/uploads/web-3/..%2Fother/x.png", "path"),
    ("/v1/uploads/web-3/a//b.png", "path"),
    ("/v1/uploads/..%2Fevil/x.png", "source"),
    ("/v1/uploads/bad%20source/x.png", "source"),
])
async def test_paths_never_leave_the_tenant_area(client: TestClient, path: str,
                                                 field: str) -> None:
    resp = await client.put(path, data=b"1", headers={"Authorization": "Bearer good"})
    assert resp.status == 422, await resp.text()
    assert (await resp.json())["error"]["details"][0]["field"] == field
