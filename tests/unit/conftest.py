"""The unit tier runs without servers (DESIGN.md §13): pure logic with fakes, no network.

Everything here applies only to tests under ``tests/unit``: the overriding fixtures
are visible to this directory alone and the autouse guards are function-scoped
monkeypatches, undone after each unit test, so ``tests/integration`` (which may run
in the same pytest process under ``make test``) still starts its real servers.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

SERVER_BINARIES = frozenset({"nats-server", "nats-server.exe", "weed", "weed.exe"})
"""Executables a unit test must never launch."""


class ServerInUnitTest(AssertionError):
    """A unit test tried to start a real server: it belongs in tests/integration."""


def _refuse(what: str) -> NoReturn:
    raise ServerInUnitTest(f"unit tests run without servers: {what} was started; "
                           "move this test to tests/integration (DESIGN.md §13)")


def _refusing(what: str) -> Any:
    def refuse(*args: Any, **kwargs: Any) -> NoReturn:
        _refuse(what)
    return refuse


def _program(args: Any) -> str:
    if isinstance(args, str | bytes | Path):
        first = str(args).split()[0] if str(args).split() else ""
    else:
        first = str(next(iter(args), ""))
    return Path(first).name


class _GuardedPopen(subprocess.Popen):  # type: ignore[type-arg]
    """``subprocess.Popen`` that refuses nats-server and weed, whoever launches them."""

    def __init__(self, args: Any, *rest: Any, **kwargs: Any) -> None:
        if _program(args) in SERVER_BINARIES:
            _refuse(_program(args))
        super().__init__(args, *rest, **kwargs)


@pytest.fixture(scope="module", autouse=True)
def _no_servers() -> Iterator[None]:
    """Fail a unit test that starts nats-server or SeaweedFS, by any of the usual routes.

    Module-scoped and autouse, so it is in place before the module's own fixtures."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        _guard(monkeypatch)
        yield


def _guard(monkeypatch: pytest.MonkeyPatch) -> None:
    import radtrain.servers.nats as nats
    import radtrain.servers.seaweedfs as seaweedfs

    for module in (nats, seaweedfs):
        for name, what in (("start_nats", "nats-server"), ("start_seaweedfs", "SeaweedFS"),
                           ("nats_server_binary", "nats-server"),
                           ("seaweedfs_binary", "SeaweedFS")):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, _refusing(what))
    # Modules that imported the starters by name keep their own reference.
    for module_name in ("radtrain.stack", "tests.conftest", "bench.bench_import"):
        module = sys.modules.get(module_name)
        for name, what in (("start_nats", "nats-server"), ("start_seaweedfs", "SeaweedFS")):
            if module is not None and hasattr(module, name):
                monkeypatch.setattr(module, name, _refusing(what))
    monkeypatch.setattr(subprocess, "Popen", _GuardedPopen)


@pytest.fixture(scope="session")
def nats_server() -> NoReturn:
    """Overrides tests/conftest.py's real server for unit tests only."""
    _refuse("the nats_server fixture")


@pytest.fixture(scope="session")
def s3_server() -> NoReturn:
    """Overrides tests/conftest.py's real SeaweedFS for unit tests only."""
    _refuse("the s3_server fixture")


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """One intra-op thread while a unit test module runs: the tiny models here gain
    nothing from more, and on a shared machine OpenMP workers spinning for busy cores
    made the tier several times slower. Module-scoped so that a module's fixtures and
    its tests compute with the same thread count (bitwise-comparable results); restored
    afterwards (the setting is process-wide)."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
