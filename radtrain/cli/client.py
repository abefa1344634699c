"""A tiny synchronous HTTP client for the CLI: JSON in, JSON out, errors as text.

Also what every command that talks to the gateway shares: where the gateway is
and which key to send (``--url``/``--api-key``, else the settings:
``RADTRAIN_GATEWAY_HOST``/``PORT`` and ``RADTRAIN_API_KEY``), and the exit
codes (:class:`Exit`): errors go to stderr, data to stdout.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from infra.settings import Settings

err_console = Console(stderr=True)


class Exit(IntEnum):
    """The exit codes of every ``radtrain`` command (README: Exit codes)."""

    OK = 0
    FAILURE = 1
    """The command ran and the answer is no (task failed, conflict, refused, ...)."""
    USAGE = 2
    """Wrong options or arguments (nothing was done)."""
    NOT_FOUND = 3
    """What it names does not exist (or belongs to another tenant)."""
    UNAVAILABLE = 4
    """The gateway, NATS or the store cannot be reached or answers 503/429: retry later."""


EXIT_CODES_HELP = ("Exit codes: 0 ok, 1 failure, 2 usage error, 3 not found, "
                   "4 unavailable (gateway, NATS or store unreachable, 503/429; retry).")

UrlOpt = Annotated[str | None, typer.Option(
    help="Gateway URL (default: http://RADTRAIN_GATEWAY_HOST:RADTRAIN_GATEWAY_PORT).")]
ApiKeyOpt = Annotated[str | None, typer.Option(
    help="API key, sent as a bearer token (default: RADTRAIN_API_KEY); it decides the "
         "tenant, as in the API.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (machine-readable) "
                                                     "instead of tables.")]


class ApiCallError(RuntimeError):
    def __init__(self, status: int, body: Any) -> None:
        err = body.get("error", {}) if isinstance(body, dict) else {}
        details = "".join(f"\n  - {d['field']}: {d['message']}" for d in err.get("details", []))
        message = err.get("message", body)
        super().__init__(f"HTTP {status} {err.get('code', '')}: {message}{details}")
        self.status = status
        self.body = body


@dataclass(frozen=True)
class Target:
    url: str
    token: str | None


def target(url: str | None, api_key: str | None) -> Target:
    """The gateway and key from the options, else from the settings."""
    settings = Settings()
    base = (url or f"http://{settings.gateway_host}:{settings.gateway_port}").rstrip("/")
    token = api_key or (settings.api_key.get_secret_value() if settings.api_key else None)
    return Target(base, token)


def _request(method: str, url: str, data: bytes | None, headers: dict[str, str] | None,
             token: str | None) -> urllib.request.Request:
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    return req


def _http_error(exc: urllib.error.HTTPError) -> ApiCallError:
    raw = exc.read()
    try:
        payload = json.loads(raw)
    except ValueError:
        payload = raw.decode(errors="replace")
    return ApiCallError(exc.code, payload)


def call(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
         timeout: float = 30.0, token: str | None = None) -> tuple[int, Any, dict[str, str]]:
    """One request; ``token`` is the API key, sent as ``Authorization: Bearer``."""
    data = None if body is None else json.dumps(body).encode()
    req = _request(method, url, data, headers, token)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null"), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        raise _http_error(exc) from None


def download(url: str, dest: Path, token: str | None, timeout: float = 60.0) -> int:
    """Stream ``url`` into ``dest`` (through a temporary name); the bytes written."""
    req = _request("GET", url, None, None, token)
    part = dest.with_name(dest.name + ".part")
    size = 0
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp, part.open("wb") as fh:
            while chunk := resp.read(1 << 20):
                fh.write(chunk)
                size += len(chunk)
    except urllib.error.HTTPError as exc:
        part.unlink(missing_ok=True)
        raise _http_error(exc) from None
    part.replace(dest)
    return size


def exit_code(exc: BaseException) -> Exit:
    """The exit code of an error: 404 not found, 429/5xx and no connection unavailable."""
    if isinstance(exc, ApiCallError):
        if exc.status == 404:
            return Exit.NOT_FOUND
        if exc.status in (429, 502, 503, 504):
            return Exit.UNAVAILABLE
        return Exit.FAILURE
    if isinstance(exc, urllib.error.HTTPError):
        return exit_code(ApiCallError(exc.code, None))
    if isinstance(exc, urllib.error.URLError | ConnectionError | TimeoutError | socket.timeout):
        return Exit.UNAVAILABLE
    return Exit.FAILURE


def fail(message: str, code: Exit = Exit.FAILURE) -> NoReturn:
    """Say why on stderr and exit with ``code``."""
    err_console.print(f"[red]error[/]: {message}", markup=True, highlight=False)
    raise typer.Exit(int(code))


@contextmanager
def api_errors(what: str) -> Iterator[None]:
    """HTTP and connection errors of ``what`` -> a line on stderr and their exit code."""
    try:
        yield
    except ApiCallError as exc:
        fail(f"{what}: {exc}", exit_code(exc))
    except urllib.error.HTTPError as exc:
        fail(f"{what}: HTTP {exc.code}", exit_code(exc))
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        fail(f"{what}: gateway unreachable ({reason})", Exit.UNAVAILABLE)
