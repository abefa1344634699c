"""``gateway_workers`` = 2: ``python -m gateway`` as a supervisor of two worker processes
sharing one port (SO_REUSEPORT), against the session's real nats-server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from infra.settings import Settings
from radtrain.servers.nats import free_port
from radtrain.stack import service_env
from tests.support.tenancy_utils import apply_streams, issue_key

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

BODY: dict[str, Any] = {
    "name": "workers", "flow": "general", "task_type": "classification", "dataset_id": "ds1",
    "model": {"mode": "manual", "network": "mobilenetv3_small_100", "pretrained": False},
}


@dataclass
class Gateway:
    proc: subprocess.Popen[bytes]
    url: str
    key: str
    log: Path

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        """A new connection each time: the kernel picks a worker per connection."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def submit(self) -> int:
        req = urllib.request.Request(
            self.url + "/v1/tasks", data=json.dumps(BODY).encode(), method="POST",
            headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status

    def pids_seen(self, want: int, timeout_s: float = 60.0, *,
                  exclude: frozenset[int] = frozenset()) -> set[int]:
        """Distinct ``/healthz`` pids (other than ``exclude``) until ``want`` are seen."""
        seen: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text(errors="replace")[-3000:]
            try:
                status, body = self.get("/healthz")
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
                continue
            if status == 200 and body["pid"] not in exclude:
                seen.add(body["pid"])
                if len(seen) >= want:
                    return seen
        raise AssertionError(f"saw pids {seen}, wanted {want}:\n"
                             + self.log.read_text(errors="replace")[-3000:])


def children(pid: int) -> set[int]:
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.add(int(stat.parent.name))
    return out


def gone(pids: set[int], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = set()
        for pid in pids:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                alive.add(pid)
        if not alive:
            return True
        time.sleep(0.2)
    return False


@pytest.fixture
def gateway(nats_server: str, tmp_path: Path) -> Iterator[Gateway]:
    import asyncio

    port = free_port()
    settings = Settings(nats_url=nats_server, store_dir=tmp_path / "store", gateway_port=port,
                        gateway_workers=2, gateway_stop_timeout_s=10, log_format="text")
    asyncio.run(apply_streams(settings))
    key = asyncio.run(issue_key(settings, "default"))
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "gateway"], env=service_env(settings),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    gw = Gateway(proc, f"http://127.0.0.1:{port}", key, log)
    try:
        yield gw
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_two_workers_share_the_port_restart_and_stop_cleanly(gateway: Gateway) -> None:
    workers = gateway.pids_seen(2)
    assert workers == children(gateway.proc.pid) and gateway.proc.pid not in workers
    assert gateway.get("/readyz")[0] == 200
    assert {gateway.submit() for _ in range(6)} == {202}
    # A worker that dies is replaced; the other keeps serving meanwhile.
    dead = min(workers)
    os.kill(dead, signal.SIGKILL)
    (new,) = gateway.pids_seen(1, exclude=frozenset(workers))
    assert new in children(gateway.proc.pid) and dead not in children(gateway.proc.pid)
    # SIGTERM: every worker stops, then the supervisor exits 0 and the port is free.
    running = children(gateway.proc.pid)
    gateway.proc.send_signal(signal.SIGTERM)
    assert gateway.proc.wait(30) == 0, gateway.log.read_text(errors="replace")[-3000:]
    assert gone(running, 5)
    with pytest.raises(urllib.error.URLError):
        gateway.get("/healthz")


def test_workers_stop_when_their_supervisor_is_killed(gateway: Gateway) -> None:
    workers = gateway.pids_seen(2)
    gateway.proc.send_signal(signal.SIGKILL)
    gateway.proc.wait()
    assert gone(workers, 15), "workers outlived their supervisor"
