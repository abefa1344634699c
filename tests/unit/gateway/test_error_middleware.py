"""A transient failure inside a route (KV contention, an outage) is a 503 the client may retry."""

from __future__ import annotations

import nats.errors
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.errors import error_middleware
from infra.errors import KVConflict, TransientError


async def _client(exc: Exception) -> TestClient:
    async def boom(_: web.Request) -> web.Response:
        raise exc

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/x", boom)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


async def test_transient_error_is_503_with_retry_after() -> None:
    client = await _client(TransientError("kv_unavailable", "bucket tasks", delay_s=2.4))
    try:
        resp = await client.get("/x")
        body = await resp.json()
        assert resp.status == 503 and resp.headers["Retry-After"] == "2"
        assert body["error"]["code"] == "kv_unavailable"
    finally:
        await client.close()


async def test_bus_timeout_outside_a_route_step_is_503() -> None:
    """E.g. the API-key lookup while its KV stream elects a leader (cluster faults), or
    uvloop's error when the NATS client writes as its connection drops (CI saw it during
    a nats-server restart: a 500 where the client should retry)."""
    closed = RuntimeError("unable to perform operation on <TCPTransport closed=True "
                          "reading=False 0x564d797e0650>; the handler is closed")
    for exc in (nats.errors.TimeoutError(), nats.errors.NoRespondersError(), TimeoutError(),
                closed):
        client = await _client(exc)
        try:
            resp = await client.get("/x")
            assert resp.status == 503 and resp.headers["Retry-After"] == "1"
            assert (await resp.json())["error"]["code"] == "unavailable"
        finally:
            await client.close()


async def test_unexpected_error_stays_500() -> None:
    client = await _client(RuntimeError("bug"))
    try:
        resp = await client.get("/x")
        assert resp.status == 500 and (await resp.json())["error"]["code"] == "internal"
    finally:
        await client.close()


def test_kv_conflict_is_transient() -> None:
    assert issubclass(KVConflict, TransientError)
