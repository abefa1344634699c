"""The session-wide scan of error bodies (tests/conftest.py) can fail a run: a pytest in a
subprocess whose only test answers a leaky error body exits 1 and names the leak."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]

CONFTEST = """
from tests.conftest import (  # noqa: F401
    _record_error_bodies, pytest_sessionfinish, pytest_testnodedown)
"""
LEAKY = """
from aiohttp import web

def test_answers_a_leaky_error() -> None:
    web.json_response({"error": {"code": "unavailable", "details": [],
                                 "message": "bus down: NoRespondersError()"}}, status=503)

def test_answers_a_clean_error() -> None:
    web.json_response({"error": {"code": "not_found", "details": [],
                                 "message": "task 'x' not found"}}, status=404)
"""


def run(tmp_path: Path, body: str, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_probe.py").write_text(body)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), *args, str(tmp_path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one process", "xdist"])
def test_a_leaky_error_body_fails_the_session(tmp_path: Path, workers: list[str]) -> None:
    """With pytest-xdist (``make test-fast``) the leak is found in a worker and reported by
    the controller: without ``pytest_testnodedown`` the xdist run passes."""
    done = run(tmp_path, LEAKY, *workers)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "2 passed" in done.stdout and "1 error bodies leak internals" in done.stdout
    assert "exception repr" in done.stdout and "NoRespondersError()" in done.stdout

