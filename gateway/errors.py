"""JSON error bodies for every failure: ``{"error": {"code", "message", "details"}}``.

Nothing internal leaves in a body (issue 17): the routes write messages for the
client, and :func:`redact` is the net under them all, applied to every message
and detail: exception reprs become their class name, internal URIs (``nats://``,
``s3://``, ``file://`` ...), credentials in URLs, IP addresses and absolute server
paths become placeholders. The details stay in the gateway's log.
"""

from __future__ import annotations

import logging
import re

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


_REPR = re.compile(r"\b([A-Z]\w*(?:Error|Exception|Timeout|Refused|Warning|Exit))"
                   r"\((?:[^()]|\((?:[^()]|\([^()]*\))*\))*\)")
_INTERNAL_URI = re.compile(r"\b(?:file|nats|tls|wss?|s3|s3a|gs|redis|postgres(?:ql)?)://"
                           r"[^\s'\"<>)]*", re.IGNORECASE)
_CREDENTIALS = re.compile(r"(\b[a-z][\w+.-]*://)[^/\s:@'\"]+(?::[^/\s@'\"]*)?@", re.IGNORECASE)
_IP = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?(?![\w.])|\[[0-9a-f:]+\](?::\d+)?",
                 re.IGNORECASE)
_SERVER_PATH = re.compile(r"(?<![\w/.:-])/(?:tmp|var|home|root|usr|opt|srv|data|private|work|"
                          r"mnt|run|etc|proc|Users)(?:/[^\s'\"),;]*)?")
_TRACEBACK = re.compile(r"Traceback \(most recent call last\):.*", re.DOTALL)


def redact(text: str) -> str:
    """``text`` without internals: reprs, internal URIs, credentials, addresses, paths."""
    text = _TRACEBACK.sub("(details in the gateway log)", text)
    text = _REPR.sub(lambda m: m.group(1), text)
    text = _INTERNAL_URI.sub("<internal>", text)
    text = _CREDENTIALS.sub(lambda m: f"{m.group(1)}<redacted>@", text)
    text = _IP.sub("<host>", text)
    return _SERVER_PATH.sub("<path>", text)


def error_response(status: int, code: str, message: str,
                   details: list[ErrorItem] | None = None,
                   headers: dict[str, str] | None = None) -> web.Response:
    items = [d.model_copy(update={"message": redact(d.message)}) for d in details or []]
    body = ErrorBody(error=ErrorInfo(code=code, message=redact(message), details=items))
    return web.json_response(body.model_dump(), status=status, headers=headers)


def store_unavailable(exc: BaseException) -> ApiError:
    """503 for a store error: the detail (bucket, endpoint, key) goes to the log only."""
    log.warning("object store unavailable: %s", exc)
    return ApiError(503, "unavailable", "object store unavailable, retry later",
                    headers={"Retry-After": "1"})


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


def connection_closed(exc: RuntimeError) -> bool:
    """uvloop's error for a write on a connection that has just closed: the NATS client
    writing while it reconnects (nats-py lets it through as it is), not a bug of ours."""
    return str(exc).endswith("; the handler is closed")


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
        return error_response(503, exc.code, "temporarily unavailable; retry later",
                              headers={"Retry-After": str(max(1, round(exc.delay_s or 5.0)))})
    except (nats.errors.Error, TimeoutError) as exc:  # e.g. a KV read (API key) while its
        # stream elects a leader or the node is unreachable: the client retries
        return _bus_unavailable(request, exc)
    except RuntimeError as exc:
        return _bus_unavailable(request, exc) if connection_closed(exc) else _internal(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        keep = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        return error_response(exc.status, code, exc.text or exc.reason, headers=keep)
    except Exception:
        return _internal(request)


def _bus_unavailable(request: web.Request, exc: BaseException) -> web.Response:
    log.warning("event bus unavailable on %s %s: %r", request.method, request.path, exc)
    return error_response(503, "unavailable", "event bus unavailable, retry later",
                          headers={"Retry-After": "1"})


def _internal(request: web.Request) -> web.Response:
    """500 for an error we did not expect: the traceback goes to the log only."""
    log.exception("unhandled error on %s %s", request.method, request.path)
    return error_response(500, "internal", "internal error; see the gateway log")
