"""JSON error bodies for every failure: ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

import logging

import nats.errors
from aiohttp import web
from pydantic import ValidationError

from infra.errors import TransientError
from schemas.api import ErrorBody, ErrorInfo, ErrorItem

log = logging.getLogger("radtrain.gateway")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str,
                 details: list[ErrorItem] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        self.headers = headers or {}


def error_response(status: int, code: str, message: str,
                   details: list[ErrorItem] | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    body = ErrorBody(error=ErrorInfo(code=code, message=message, details=details or []))
    return web.json_response(body.model_dump(), status=status, headers=headers)


def from_validation(exc: ValidationError) -> ApiError:
    errors = exc.errors()
    if any(e["type"] == "json_invalid" for e in errors):
        return ApiError(400, "invalid_json", f"request body is not valid JSON: {errors[0]['msg']}")
    details = [
        ErrorItem(field=".".join(str(p) for p in e["loc"]) or "body", message=e["msg"])
        for e in errors
    ]
    fields = ", ".join(d.field for d in details)
    return ApiError(422, "validation_error", f"invalid request: {fields}", details)


@web.middleware
async def error_middleware(request: web.Request, handler):  # type: ignore[no-untyped-def]
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)
    except ValidationError as exc:
        api = from_validation(exc)
        return error_response(api.status, api.code, api.message, api.details)
    except TransientError as exc:  # e.g. KV compare-and-set contention: the client retries
        log.warning("transient error on %s %s: %s %s", request.method, request.path,
                    exc.code, exc.message)
        return error_response(503, exc.code, f"temporarily unavailable: {exc.message}",
                              headers={"Retry-After": str(max(1, round(exc.delay_s)))})
    except (nats.errors.Error, TimeoutError) as exc:  # e.g. a KV read (API key) while its
        # stream elects a leader or the node is unreachable: the client retries
        log.warning("event bus unavailable on %s %s: %r", request.method, request.path, exc)
        return error_response(503, "unavailable", f"event bus unavailable, retry later: {exc!r}",
                              headers={"Retry-After": "1"})
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        keep = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        return error_response(exc.status, code, exc.text or exc.reason, headers=keep)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal", "internal error; see the gateway log")
