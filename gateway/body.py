"""Request bodies: JSON only where JSON is expected, parsed straight into a contract.

Checking the media type before parsing turns a form post or a file upload
sent to a JSON route into a clear 415 instead of a confusing parse error.
The size limit is aiohttp's ``client_max_size`` (413, before any parsing).
"""

from __future__ import annotations

from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel

from gateway.errors import ApiError

M = TypeVar("M", bound=BaseModel)

JSON_TYPES = ("application/json",)


def require_json(request: web.Request, accepted: tuple[str, ...] = JSON_TYPES) -> None:
    if request.content_type not in accepted:
        raise ApiError(415, "unsupported_media_type",
                       f"Content-Type must be {' or '.join(accepted)}, "
                       f"got {request.content_type or 'none'!r}")


async def read_model(request: web.Request, model: type[M],
                     accepted: tuple[str, ...] = JSON_TYPES) -> M:
    """Media type, then size (aiohttp), then strict validation (400 bad JSON, 422 bad shape)."""
    require_json(request, accepted)
    return model.model_validate_json(await request.read())


def int_param(request: web.Request, name: str, default: int, hi: int) -> int:
    """A bounded non-negative integer query parameter, or a 400 naming it."""
    raw = request.query.get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "invalid_query", f"{name} must be an integer, got {raw!r}") from None
    if not 0 <= value <= hi:
        raise ApiError(400, "invalid_query", f"{name} must be between 0 and {hi}")
    return value
