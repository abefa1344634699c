"""Who is calling: bearer API keys, the tenant every read and write is scoped to.

Authentication is a middleware, so every route (including the ones other
modules add) is protected unless listed in :data:`PUBLIC_PATHS`; route code
asks :func:`tenant_of` and never parses headers itself. Objects of another
tenant answer 404, exactly like missing ones, so ids cannot be probed.
"""

from __future__ import annotations

import time

from aiohttp import web

from gateway.app_keys import API_KEY_ID, LIMITER, TENANT
from gateway.errors import ApiError
from gateway.ratelimit import retry_after_header
from gateway.tenancy import ApiKeyRepo
from schemas.tenancy import ApiKeyRecord

PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"})
"""Probes, scrapes and the API description: no tenant data behind any of them."""


class Unauthorized(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(401, "unauthorized", message,
                         headers={"WWW-Authenticate": 'Bearer realm="radtrain"'})


class KeyCache:
    """Looked-up keys for ``ttl_s``: saves a KV round trip per request.

    A revocation takes effect within ``ttl_s`` on every gateway (0: at once).
    Misses are not cached, so a new key works on its first request.
    """

    def __init__(self, repo: ApiKeyRepo, ttl_s: float, max_entries: int = 10_000) -> None:
        self._repo, self._ttl, self._max = repo, ttl_s, max_entries
        self._cache: dict[str, tuple[float, ApiKeyRecord]] = {}

    async def authenticate(self, token: str) -> ApiKeyRecord | None:
        now = time.monotonic()
        hit = self._cache.get(token)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        record = await self._repo.authenticate(token)
        if record is not None and self._ttl > 0:
            if len(self._cache) >= self._max:
                self._cache.clear()
            self._cache[token] = (now, record)
        else:
            self._cache.pop(token, None)
        return record


KEYS = web.AppKey("key_cache", KeyCache)


def bearer_token(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing bearer API key: send 'Authorization: Bearer <key>'")
    return token.strip()


@web.middleware
async def auth_middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
    """Resolve the key to a tenant and spend one token of its rate limit."""
    if request.path in PUBLIC_PATHS:
        return await handler(request)
    record = await request.app[KEYS].authenticate(bearer_token(request))
    if record is None:
        raise Unauthorized("invalid or revoked API key")
    wait = request.app[LIMITER].take(record.id)
    if wait > 0:
        raise ApiError(429, "rate_limited",
                       f"too many requests for this key; retry in {wait:.1f}s",
                       headers={"Retry-After": retry_after_header(wait)})
    request[TENANT] = record.tenant
    request[API_KEY_ID] = record.id
    return await handler(request)


def tenant_of(request: web.Request) -> str:
    """The caller's tenant, set by :func:`auth_middleware`."""
    tenant = request.get(TENANT)
    if tenant is None:  # a public route asked: it has no tenant by definition
        raise Unauthorized("this route needs an API key")
    return tenant

