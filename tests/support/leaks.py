"""Every error body the test suite produces, recorded and scanned for internals (issue 17).

tests/conftest.py records each JSON body the gateway answers with a status of 400
or more (``aiohttp.web.json_response`` is what every error path ends in) and
fails the session if one of them carries something internal: an exception repr,
a traceback, an internal URI, a loopback address, a server path or the name of
an S3 bucket the tests created.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PATTERNS: dict[str, re.Pattern[str]] = {
    "traceback": re.compile(r"Traceback \(most recent call last\)|File \"[^\"]+\", line \d+"),
    "exception repr": re.compile(r"\b\w*(?:Error|Exception)\("),
    "internal URI": re.compile(r"\b(?:nats|tls|s3|file)://", re.IGNORECASE),
    "loopback or private address": re.compile(
        r"(?<![\w.])(?:127\.\d+\.\d+\.\d+|10\.\d+\.\d+\.\d+|192\.168\.\d+\.\d+|0\.0\.0\.0)"
        r"(?![\w.])|\blocalhost:\d+"),
    "server path": re.compile(r"(?<![\w/.:-])/(?:tmp|var|home|root|usr|opt|srv|private|work|"
                              r"mnt|run|proc)/[^\s'\"]*"),
    "python internals": re.compile(r"site-packages|\.py\", line|<object at 0x|at 0x[0-9a-f]{6,}"),
}


def _local_paths() -> list[str]:
    """Absolute paths of this machine that must not appear either (cwd, temp, home)."""
    out = {os.getcwd(), tempfile.gettempdir(), str(Path.home())}
    return sorted(p for p in out if len(p) > 4)


def find_leaks(text: str, buckets: Iterable[str] = ()) -> list[str]:
    """The kinds of internal detail found in ``text`` (empty: nothing leaks)."""
    found = [name for name, pattern in PATTERNS.items() if pattern.search(text)]
    found += [f"server path {p}" for p in _local_paths() if p in text]
    found += [f"bucket name {b!r}" for b in buckets
              if re.search(rf"(?<![\w-]){re.escape(b)}(?![\w-])", text)]
    return found


@dataclass
class ErrorBodies:
    """What the session saw: (status, body text) of every JSON error answer."""

    bodies: list[tuple[int, str]] = field(default_factory=list)
    buckets: set[str] = field(default_factory=set)

    def record(self, status: int, text: str) -> None:
        self.bodies.append((status, text))

    def leaks(self) -> list[tuple[int, str, list[str]]]:
        out = []
        for status, text in self.bodies:
            kinds = find_leaks(text, self.buckets)
            if kinds:
                out.append((status, text, kinds))
        return out


def recording(original: Callable[..., Any], sink: ErrorBodies) -> Callable[..., Any]:
    """``aiohttp.web.json_response`` that also records error bodies into ``sink``."""

    def json_response(*args: Any, **kwargs: Any) -> Any:
        response = original(*args, **kwargs)
        if response.status >= 400:
            text = kwargs.get("text")
            data = args[0] if args else kwargs.get("data")
            if text is None and data is not None:
                text = json.dumps(data, default=str)
            sink.record(response.status, text or "")
        return response

    return json_response


SESSION = ErrorBodies()
"""The session's recorder (tests/conftest.py installs it)."""

FROM_WORKERS: list[tuple[int, str, list[str]]] = []
"""Leaks found by pytest-xdist workers, gathered by the controller (tests/conftest.py)."""
