"""The ``cursor`` query parameter of the listings that page by cursor (tasks, datasets)."""

from __future__ import annotations

from aiohttp import web

from gateway.errors import ApiError
from infra.kv.pages import Cursor


def cursor_param(request: web.Request, state: str | None, offset: int) -> Cursor | None:
    """The ``cursor`` query parameter (the ``next`` of an earlier page), checked: a 400
    when it is not one, names another state filter, or comes with an offset."""
    token = request.query.get("cursor")
    if token is None:
        return None
    if offset:
        raise ApiError(400, "invalid_query", "cursor and offset exclude each other")
    try:
        cursor = Cursor.decode(token)
    except ValueError as exc:
        raise ApiError(400, "invalid_query", f"cursor: {exc}") from None
    if cursor.state != state:
        raise ApiError(400, "invalid_query", "cursor belongs to another state filter")
    return cursor
