"""Who is calling: bearer API keys, the tenant every read and write is scoped to.

Authentication is a middleware, so every route (including the ones other
modules add) is protected unless listed in :data:`PUBLIC_PATHS`; route code
asks :func:`tenant_of` and never parses headers itself. Objects of another
tenant answer 404, exactly like missing ones, so ids cannot be probed.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from gateway.app_keys import API_KEY_ID, LIMITER, TENANT
from gateway.errors import ApiError
from gateway.limits import limit_unauthenticated, refund_unauthenticated
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
        self._inflight: dict[str, asyncio.Future[ApiKeyRecord | None]] = {}
        """One KV read per key at a time: a burst on a cold key (a client's first 64
        concurrent requests, or all of them when its entry expires) shares it."""

    def looking_up(self, token: str) -> bool:
        """Whether a KV read of ``token`` is under way (a request can join it)."""
        return token in self._inflight

    def cached(self, token: str) -> ApiKeyRecord | None:
        """The record of a key looked up less than ``ttl_s`` ago; no KV read."""
        hit = self._cache.get(token)
        if hit is not None and time.monotonic() - hit[0] < self._ttl:
            return hit[1]
        return None

    async def authenticate(self, token: str) -> ApiKeyRecord | None:
        now = time.monotonic()
        hit = self.cached(token)
        if hit is not None:
            return hit
        pending = self._inflight.get(token)
        if pending is not None:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if pending.cancelled() and task is not None and not task.cancelling():
                    return await self.authenticate(token)  # its leader went away: read again
                raise
        lookup: asyncio.Future[ApiKeyRecord | None] = asyncio.get_running_loop().create_future()
        lookup.add_done_callback(lambda f: f.cancelled() or f.exception())  # read: no warning
        self._inflight[token] = lookup
        try:
            record = await self._repo.authenticate(token)
        except asyncio.CancelledError:
            lookup.cancel()
            raise
        except BaseException as exc:
            lookup.set_exception(exc)
            raise
        finally:
            del self._inflight[token]
        if record is not None and self._ttl > 0:
            if len(self._cache) >= self._max:
                self._cache.clear()
            self._cache[token] = (now, record)
        else:
            self._cache.pop(token, None)
        lookup.set_result(record)
        return record


KEYS = web.AppKey("key_cache", KeyCache)


def bearer_token(request: web.Request) -> str:
    token = _bearer(request)
    if token is None:
        raise Unauthorized("missing bearer API key: send 'Authorization: Bearer <key>'")
    return token


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


@web.middleware
async def auth_middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
    """Resolve the key to a tenant and spend one token of its rate limit."""
    if request.path in PUBLIC_PATHS:
        return await handler(request)
    keys, token = request.app[KEYS], _bearer(request)
    record = keys.cached(token) if token else None
    if record is None and token is not None and keys.looking_up(token):
        record = await keys.authenticate(token)  # joins the read under way: paid for once
    elif record is None:  # not a key this gateway knows: the address pays, before any KV read
        limit_unauthenticated(request)
        record = await keys.authenticate(bearer_token(request))
        if record is not None:
            refund_unauthenticated(request)
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

