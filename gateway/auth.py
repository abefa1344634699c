"""Who is calling: the tenant every read and write is scoped to."""

from __future__ import annotations

from aiohttp import web

from gateway.keys import SETTINGS


def tenant_of(request: web.Request) -> str:
    """Single-tenant until API keys land (issue 8): every caller is the default tenant."""
    return request.app[SETTINGS].default_tenant
