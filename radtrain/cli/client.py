"""A tiny synchronous HTTP client for the CLI: JSON in, JSON out, errors as text."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class ApiCallError(RuntimeError):
    def __init__(self, status: int, body: Any) -> None:
        err = body.get("error", {}) if isinstance(body, dict) else {}
        details = "".join(f"\n  - {d['field']}: {d['message']}" for d in err.get("details", []))
        message = err.get("message", body)
        super().__init__(f"HTTP {status} {err.get('code', '')}: {message}{details}")
        self.status = status
        self.body = body


def call(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
         timeout: float = 30.0, token: str | None = None) -> tuple[int, Any, dict[str, str]]:
    """One request; ``token`` is the API key, sent as ``Authorization: Bearer``."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null"), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = raw.decode(errors="replace")
        raise ApiCallError(exc.code, payload) from None
